//! Flags whose value is a kind (a store, a backend, a pod wiring): the kind's own type is
//! the flag's type. Its names, from the type's own list, are offered in `--help` and in
//! suggestions, and the value is mapped back to the type, so adding a kind to its type
//! needs no edit among the flags.

use clap::builder::{PossibleValuesParser, TypedValueParser};
use twill_api::backend::BackendKind;
use twill_api::wiring::PodWiring;
use twill_store::StoreKind;

/// A type with a fixed list of kinds, each with its name.
pub trait Kind: Copy + Send + Sync + 'static {
    fn all() -> &'static [Self];
    fn name(self) -> &'static str;
}

impl Kind for StoreKind {
    fn all() -> &'static [Self] {
        &StoreKind::ALL
    }
    fn name(self) -> &'static str {
        StoreKind::name(self)
    }
}

impl Kind for BackendKind {
    fn all() -> &'static [Self] {
        &BackendKind::ALL
    }
    fn name(self) -> &'static str {
        BackendKind::name(self)
    }
}

impl Kind for twill_api::backend::TunnelType {
    fn all() -> &'static [Self] {
        &twill_api::backend::TunnelType::ALL
    }
    fn name(self) -> &'static str {
        twill_api::backend::TunnelType::name(self)
    }
}

impl Kind for PodWiring {
    fn all() -> &'static [Self] {
        &PodWiring::ALL
    }
    fn name(self) -> &'static str {
        PodWiring::name(self)
    }
}

/// The value parser of a flag of kind `K`: `#[arg(value_parser = kind_arg::parser::<K>())]`.
pub fn parser<K: Kind>() -> impl TypedValueParser<Value = K> {
    PossibleValuesParser::new(K::all().iter().map(|k| k.name())).map(|s| {
        *K::all()
            .iter()
            .find(|k| k.name() == s)
            .expect("clap passes only a possible value")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Flags {
        #[arg(long, value_parser = parser::<StoreKind>())]
        store: Option<StoreKind>,
        #[arg(long, value_parser = parser::<BackendKind>())]
        backend: Option<BackendKind>,
        #[arg(long, value_parser = parser::<PodWiring>())]
        pod_wiring: Option<PodWiring>,
    }

    fn flags(args: &[&str]) -> Result<Flags, clap::Error> {
        Flags::try_parse_from(std::iter::once("t").chain(args.iter().copied()))
    }

    #[test]
    fn every_kind_parses_by_its_name() {
        for k in StoreKind::ALL {
            assert_eq!(flags(&["--store", k.name()]).unwrap().store, Some(k));
        }
        for k in BackendKind::ALL {
            assert_eq!(flags(&["--backend", k.name()]).unwrap().backend, Some(k));
        }
        for k in PodWiring::ALL {
            let f = flags(&["--pod-wiring", k.name()]).unwrap();
            assert_eq!(f.pod_wiring, Some(k));
        }
    }

    #[test]
    fn an_unknown_name_is_a_usage_error_listing_the_kinds() {
        let e = flags(&["--backend", "gre"]).err().expect("refused");
        assert_eq!(e.kind(), clap::error::ErrorKind::InvalidValue);
        let text = e.to_string();
        for k in BackendKind::ALL {
            assert!(text.contains(k.name()), "{k} missing from {text}");
        }
        let e = flags(&["--store", "etdc"]).err().expect("refused");
        assert!(e.to_string().contains("etcd"), "{e}");
    }
}
