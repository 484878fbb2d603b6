//! `twill-datapath`: the datapath process (twilld runs the same code as `twilld datapath`).
fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    twill_datapath::run::run(&args)
}
