//! The twill-cni that `twill install-cni` copies onto nodes runs on any node's libc: the
//! build of `scripts/build-static.sh --cni-only` is a static ELF (no PT_INTERP, no DT_NEEDED; `ldd`
//! agrees) and it answers VERSION in a chroot that holds nothing but itself.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use twill_testkit::{require_root, TempDir};

/// Runs scripts/build-static.sh (a no-op when the build is up to date) and returns the
/// binary it placed.
fn static_plugin() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = TempDir::new("stc");
    let o = Command::new(root.join("scripts/build-static.sh"))
        .arg("--cni-only")
        .arg(&out.path)
        .current_dir(&root)
        .stderr(Stdio::inherit())
        .output()
        .expect("run scripts/build-static.sh");
    assert!(o.status.success(), "scripts/build-static.sh failed");
    let printed = String::from_utf8_lossy(&o.stdout);
    let path = PathBuf::from(
        printed
            .lines()
            .last()
            .expect("the script prints the path")
            .trim(),
    );
    assert_eq!(path, out.path.join("twill-cni"));
    // Kept beyond `out`: the caller copies it where it needs it.
    let keep = std::env::temp_dir().join(format!("twlstc-{}-twill-cni", std::process::id()));
    std::fs::copy(&path, &keep).unwrap();
    keep
}

/// The ELF program header types and whether the dynamic section names shared libraries.
fn program_headers(elf: &[u8]) -> Vec<u32> {
    assert_eq!(&elf[..4], b"\x7fELF", "not an ELF file");
    assert_eq!(elf[4], 2, "not a 64-bit ELF");
    let u16_at = |o: usize| u16::from_le_bytes(elf[o..o + 2].try_into().unwrap()) as usize;
    let u64_at = |o: usize| u64::from_le_bytes(elf[o..o + 8].try_into().unwrap()) as usize;
    let (phoff, phentsize, phnum) = (u64_at(0x20), u16_at(0x36), u16_at(0x38));
    (0..phnum)
        .map(|i| u32::from_le_bytes(elf[phoff + i * phentsize..][..4].try_into().unwrap()))
        .collect()
}

const PT_INTERP: u32 = 3;

#[test]
fn the_static_build_needs_no_libc() {
    require_root("the_static_build_needs_no_libc");
    let plugin = static_plugin();
    struct Rm(PathBuf);
    impl Drop for Rm {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    let _rm = Rm(plugin.clone());
    let elf = std::fs::read(&plugin).unwrap();
    let headers = program_headers(&elf);
    assert!(!headers.is_empty());
    assert!(
        !headers.contains(&PT_INTERP),
        "{} has a PT_INTERP: it needs a dynamic loader",
        plugin.display()
    );
    let ldd = Command::new("ldd").arg(&plugin).output().expect("run ldd");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&ldd.stdout),
        String::from_utf8_lossy(&ldd.stderr)
    );
    assert!(
        said.contains("statically linked") || said.contains("not a dynamic executable"),
        "ldd says: {said}"
    );
    // A root with nothing in it but the plugin: no loader, no libc.
    let root = TempDir::new("stcroot");
    std::fs::copy(&plugin, root.path.join("twill-cni")).unwrap();
    let o = Command::new("/usr/sbin/chroot")
        .arg(&root.path)
        .arg("/twill-cni")
        .env_clear()
        .env("CNI_COMMAND", "VERSION")
        .env("CNI_PATH", "/")
        .stdin(Stdio::null())
        .output()
        .expect("run chroot");
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success() && stdout.contains("\"supportedVersions\""),
        "the static twill-cni in an empty root: {:?} stdout {stdout:?} stderr {:?}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    // And the dynamic build would not have run there: the check above means something.
    let dynamic = env!("CARGO_BIN_EXE_twill-cni");
    std::fs::copy(dynamic, root.path.join("twill-cni-dyn")).unwrap();
    let o = Command::new("/usr/sbin/chroot")
        .arg(&root.path)
        .arg("/twill-cni-dyn")
        .env_clear()
        .env("CNI_COMMAND", "VERSION")
        .stdin(Stdio::null())
        .output()
        .expect("run chroot");
    assert!(
        !o.status.success(),
        "a dynamic twill-cni ran without its loader?"
    );
}
