//! Address-range arithmetic. Pure: no files, no sockets.
//!
//! A [`Pool`] is one or more disjoint [`Range`]s (each a `rangeStart..=rangeEnd` span of a
//! subnet, with a gateway) minus [`Reservation`]s. It answers which addresses may be handed
//! out and in which order: [`Pool::candidates_after`] walks round-robin from the address
//! after the last one handed out, like CNI's host-local, so a just-freed address is not
//! reused at once (a stale ARP/conntrack entry elsewhere would otherwise reach the new pod).

use ipnet::Ipv4Net;
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// Why a range, reservation or pool was refused. Each message names the field and value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    #[error("subnet {given} has host bits set; did you mean {canonical}?")]
    NotCanonical { given: Ipv4Net, canonical: Ipv4Net },
    #[error(
        "subnet {subnet} is too small: a /31 or /32 leaves no address besides the gateway; use a /30 or wider"
    )]
    TooSmall { subnet: Ipv4Net },
    #[error("{field} {ip} is outside subnet {subnet}")]
    OutsideSubnet {
        field: &'static str,
        ip: Ipv4Addr,
        subnet: Ipv4Net,
    },
    #[error(
        "{field} {ip} is the {which} address of subnet {subnet}; pick an address between them"
    )]
    NetworkOrBroadcast {
        field: &'static str,
        ip: Ipv4Addr,
        which: &'static str,
        subnet: Ipv4Net,
    },
    #[error("rangeStart {start} is after rangeEnd {end}; swap them")]
    StartAfterEnd { start: Ipv4Addr, end: Ipv4Addr },
    #[error("a pool needs at least one range")]
    NoRanges,
    #[error("range {first} overlaps range {second}; the ranges of one network must be disjoint")]
    Overlap { first: String, second: String },
    #[error(
        "reservation {input:?} is invalid: {reason}; write \"a.b.c.d\" or \"a.b.c.d-e.f.g.h\""
    )]
    BadReservation { input: String, reason: String },
}

/// One allocation range of a subnet, as in host-local's `ranges` entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    pub subnet: Ipv4Net,
    pub start: Ipv4Addr,
    pub end: Ipv4Addr,
    pub gateway: Ipv4Addr,
}

impl Range {
    /// Checks a range and fills in host-local's defaults: gateway = network + 1,
    /// start = network + 1 (the gateway is skipped when allocating), end = broadcast - 1.
    pub fn new(
        subnet: Ipv4Net,
        start: Option<Ipv4Addr>,
        end: Option<Ipv4Addr>,
        gateway: Option<Ipv4Addr>,
    ) -> Result<Range, PoolError> {
        let canonical = subnet.trunc();
        if canonical != subnet {
            return Err(PoolError::NotCanonical {
                given: subnet,
                canonical,
            });
        }
        if subnet.prefix_len() > 30 {
            return Err(PoolError::TooSmall { subnet });
        }
        let network = subnet.network();
        let broadcast = subnet.broadcast();
        let first_host = Ipv4Addr::from(u32::from(network) + 1);
        let last_host = Ipv4Addr::from(u32::from(broadcast) - 1);
        let check = |field: &'static str, ip: Ipv4Addr| {
            if !subnet.contains(&ip) {
                Err(PoolError::OutsideSubnet { field, ip, subnet })
            } else if ip == network {
                Err(PoolError::NetworkOrBroadcast {
                    field,
                    ip,
                    which: "network",
                    subnet,
                })
            } else if ip == broadcast {
                Err(PoolError::NetworkOrBroadcast {
                    field,
                    ip,
                    which: "broadcast",
                    subnet,
                })
            } else {
                Ok(ip)
            }
        };
        let start = check("rangeStart", start.unwrap_or(first_host))?;
        let end = check("rangeEnd", end.unwrap_or(last_host))?;
        let gateway = check("gateway", gateway.unwrap_or(first_host))?;
        if start > end {
            return Err(PoolError::StartAfterEnd { start, end });
        }
        Ok(Range {
            subnet,
            start,
            end,
            gateway,
        })
    }

    /// True when `ip` lies in `start..=end`.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        self.start <= ip && ip <= self.end
    }

    /// Number of addresses in `start..=end` (gateway and reservations included).
    pub fn len(&self) -> u32 {
        // start..=end never includes the network address, so this cannot overflow.
        u32::from(self.end) - u32::from(self.start) + 1
    }

    /// Never true (a range holds at least one address); present for clippy's `len` rule.
    pub fn is_empty(&self) -> bool {
        false
    }
}

impl fmt::Display for Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}-{} of {} (gateway {})",
            self.start, self.end, self.subnet, self.gateway
        )
    }
}

/// Addresses never handed out: one address, or an inclusive span `first-last`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Reservation {
    first: Ipv4Addr,
    last: Ipv4Addr,
}

impl Reservation {
    pub fn single(ip: Ipv4Addr) -> Reservation {
        Reservation {
            first: ip,
            last: ip,
        }
    }

    pub fn span(first: Ipv4Addr, last: Ipv4Addr) -> Result<Reservation, PoolError> {
        if first > last {
            return Err(PoolError::BadReservation {
                input: format!("{first}-{last}"),
                reason: format!("{first} is after {last}"),
            });
        }
        Ok(Reservation { first, last })
    }

    pub fn first(&self) -> Ipv4Addr {
        self.first
    }

    pub fn last(&self) -> Ipv4Addr {
        self.last
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        self.first <= ip && ip <= self.last
    }
}

impl FromStr for Reservation {
    type Err = PoolError;

    fn from_str(input: &str) -> Result<Reservation, PoolError> {
        let parse = |s: &str| {
            s.trim()
                .parse::<Ipv4Addr>()
                .map_err(|_| PoolError::BadReservation {
                    input: input.to_string(),
                    reason: format!("{:?} is not an IPv4 address", s.trim()),
                })
        };
        match input.split_once('-') {
            None => Ok(Reservation::single(parse(input)?)),
            Some((a, b)) => Reservation::span(parse(a)?, parse(b)?).map_err(|e| match e {
                PoolError::BadReservation { reason, .. } => PoolError::BadReservation {
                    input: input.to_string(),
                    reason,
                },
                other => other,
            }),
        }
    }
}

impl TryFrom<String> for Reservation {
    type Error = PoolError;
    fn try_from(s: String) -> Result<Reservation, PoolError> {
        s.parse()
    }
}

impl From<Reservation> for String {
    fn from(r: Reservation) -> String {
        r.to_string()
    }
}

impl fmt::Display for Reservation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

/// Disjoint ranges minus reservations and gateways.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    /// In configuration order: allocation walks them in this order, like host-local.
    ranges: Vec<Range>,
    reservations: Vec<Reservation>,
    /// Sorted, merged, disjoint inclusive spans (as u32) never handed out: the reservations
    /// plus every range's gateway (a gateway of one range may lie inside another).
    excluded: Vec<(u32, u32)>,
    /// Sum of the ranges' lengths: the length of one round-robin lap.
    lap: u64,
    capacity: u32,
}

impl Pool {
    pub fn new(ranges: Vec<Range>, reserved: Vec<Reservation>) -> Result<Pool, PoolError> {
        if ranges.is_empty() {
            return Err(PoolError::NoRanges);
        }
        let mut by_start: Vec<&Range> = ranges.iter().collect();
        by_start.sort_by_key(|r| r.start);
        for pair in by_start.windows(2) {
            if pair[1].start <= pair[0].end {
                return Err(PoolError::Overlap {
                    first: pair[0].to_string(),
                    second: pair[1].to_string(),
                });
            }
        }

        let mut spans: Vec<(u32, u32)> = reserved
            .iter()
            .map(|r| (u32::from(r.first), u32::from(r.last)))
            .chain(
                ranges
                    .iter()
                    .map(|r| (u32::from(r.gateway), u32::from(r.gateway))),
            )
            .collect();
        spans.sort_unstable();
        let mut excluded: Vec<(u32, u32)> = Vec::with_capacity(spans.len());
        for (a, b) in spans {
            match excluded.last_mut() {
                Some(last) if a <= last.1.saturating_add(1) => last.1 = last.1.max(b),
                _ => excluded.push((a, b)),
            }
        }

        let lap: u64 = ranges.iter().map(|r| u64::from(r.len())).sum();
        let mut held_back: u64 = 0;
        for r in &ranges {
            let (s, e) = (u32::from(r.start), u32::from(r.end));
            for &(a, b) in &excluded {
                if a <= e && b >= s {
                    held_back += u64::from(b.min(e) - a.max(s)) + 1;
                }
            }
        }
        // Disjoint ranges inside the IPv4 space, none holding a network address: fits u32.
        let capacity = (lap - held_back) as u32;
        Ok(Pool {
            ranges,
            reservations: reserved,
            excluded,
            lap,
            capacity,
        })
    }

    pub fn ranges(&self) -> &[Range] {
        &self.ranges
    }

    pub fn reservations(&self) -> &[Reservation] {
        &self.reservations
    }

    /// True when `ip` lies inside some range's `start..=end`.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        self.range_of(ip).is_some()
    }

    /// The range whose `start..=end` holds `ip`.
    pub fn range_of(&self, ip: Ipv4Addr) -> Option<&Range> {
        self.ranges.iter().find(|r| r.contains(ip))
    }

    /// True when `ip` may be handed out: inside a range, and not a gateway or reserved.
    /// (Network and broadcast addresses are never inside `start..=end`: `Range::new`
    /// refuses them as start or end.)
    pub fn is_allocatable(&self, ip: Ipv4Addr) -> bool {
        self.contains(ip) && !self.is_excluded(ip)
    }

    fn is_excluded(&self, ip: Ipv4Addr) -> bool {
        let ip = u32::from(ip);
        let after = self.excluded.partition_point(|&(a, _)| a <= ip);
        after > 0 && self.excluded[after - 1].1 >= ip
    }

    /// How many addresses may be handed out.
    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// Every allocatable address exactly once, round-robin: starting after `last` (or at
    /// the first range's start when `last` is `None` or not in any range, e.g. a stale
    /// hint after a config change), wrapping from each range's end to the next range and
    /// from the last range back to the first, ending with `last` itself if allocatable.
    pub fn candidates_after(&self, last: Option<Ipv4Addr>) -> impl Iterator<Item = Ipv4Addr> + '_ {
        let found = last.and_then(|ip| {
            self.ranges
                .iter()
                .position(|r| r.contains(ip))
                .map(|i| (i, ip))
        });
        let (range, next) = match found {
            Some((i, ip)) if ip == self.ranges[i].end => {
                let i = (i + 1) % self.ranges.len();
                (i, self.ranges[i].start)
            }
            Some((i, ip)) => (i, Ipv4Addr::from(u32::from(ip) + 1)),
            None => (0, self.ranges[0].start),
        };
        Lap {
            pool: self,
            range,
            next,
            remaining: self.lap,
        }
        .filter(|&ip| !self.is_excluded(ip))
    }
}

/// One lap over all range addresses, O(1) per step.
struct Lap<'a> {
    pool: &'a Pool,
    range: usize,
    next: Ipv4Addr,
    remaining: u64,
}

impl Iterator for Lap<'_> {
    type Item = Ipv4Addr;

    fn next(&mut self) -> Option<Ipv4Addr> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        let ip = self.next;
        let ranges = &self.pool.ranges;
        if ip == ranges[self.range].end {
            self.range = (self.range + 1) % ranges.len();
            self.next = ranges[self.range].start;
        } else {
            self.next = Ipv4Addr::from(u32::from(ip) + 1);
        }
        Some(ip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }
    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }
    fn range(subnet: &str) -> Range {
        Range::new(net(subnet), None, None, None).unwrap()
    }
    fn range4(subnet: &str, start: &str, end: &str, gw: &str) -> Range {
        Range::new(net(subnet), Some(ip(start)), Some(ip(end)), Some(ip(gw))).unwrap()
    }
    fn resv(s: &str) -> Reservation {
        s.parse().unwrap()
    }

    #[test]
    fn range_defaults_follow_host_local() {
        let r = range("10.244.1.0/24");
        assert_eq!(
            (r.start, r.end, r.gateway),
            (ip("10.244.1.1"), ip("10.244.1.254"), ip("10.244.1.1"))
        );
        assert_eq!(r.len(), 254);
        let pool = Pool::new(vec![r], vec![]).unwrap();
        assert_eq!(pool.capacity(), 253, "the gateway is not handed out");
        assert!(!pool.is_allocatable(ip("10.244.1.1")));
        assert!(pool.contains(ip("10.244.1.1")));
        assert!(pool.is_allocatable(ip("10.244.1.2")));
        assert!(pool.is_allocatable(ip("10.244.1.254")));
        assert!(!pool.contains(ip("10.244.1.0")) && !pool.contains(ip("10.244.1.255")));
        assert_eq!(pool.candidates_after(None).next(), Some(ip("10.244.1.2")));
    }

    #[test]
    fn range_errors_name_field_and_value() {
        let e = |s: &str, a: Option<&str>, b: Option<&str>, g: Option<&str>| {
            Range::new(net(s), a.map(ip), b.map(ip), g.map(ip)).unwrap_err()
        };
        let err = e("10.244.1.5/24", None, None, None);
        assert_eq!(
            err,
            PoolError::NotCanonical {
                given: net("10.244.1.5/24"),
                canonical: net("10.244.1.0/24")
            }
        );
        assert!(
            err.to_string().contains("did you mean 10.244.1.0/24"),
            "{err}"
        );
        assert!(matches!(
            e("10.0.0.0/31", None, None, None),
            PoolError::TooSmall { .. }
        ));
        assert!(matches!(
            e("10.0.0.1/32", None, None, None),
            PoolError::TooSmall { .. }
        ));
        assert_eq!(
            e("10.244.1.0/24", Some("10.0.0.5"), None, None).to_string(),
            "rangeStart 10.0.0.5 is outside subnet 10.244.1.0/24"
        );
        assert_eq!(
            e("10.244.1.0/24", None, Some("10.244.2.5"), None).to_string(),
            "rangeEnd 10.244.2.5 is outside subnet 10.244.1.0/24"
        );
        assert_eq!(
            e("10.244.1.0/24", None, None, Some("10.244.2.1")).to_string(),
            "gateway 10.244.2.1 is outside subnet 10.244.1.0/24"
        );
        assert_eq!(
            e(
                "10.244.1.0/24",
                Some("10.244.1.9"),
                Some("10.244.1.8"),
                None
            ),
            PoolError::StartAfterEnd {
                start: ip("10.244.1.9"),
                end: ip("10.244.1.8")
            }
        );
        let err = e("10.244.1.0/24", Some("10.244.1.0"), None, None);
        assert!(
            err.to_string()
                .starts_with("rangeStart 10.244.1.0 is the network address"),
            "{err}"
        );
        let err = e("10.244.1.0/24", None, Some("10.244.1.255"), None);
        assert!(
            err.to_string()
                .starts_with("rangeEnd 10.244.1.255 is the broadcast address"),
            "{err}"
        );
        let err = e("10.244.1.0/24", None, None, Some("10.244.1.255"));
        assert!(
            err.to_string()
                .starts_with("gateway 10.244.1.255 is the broadcast"),
            "{err}"
        );
    }

    #[test]
    fn slash_30_has_one_pod_address() {
        let pool = Pool::new(vec![range("10.244.3.0/30")], vec![]).unwrap();
        assert_eq!(pool.capacity(), 1);
        assert_eq!(
            pool.candidates_after(None).collect::<Vec<_>>(),
            vec![ip("10.244.3.2")]
        );
        assert_eq!(
            pool.candidates_after(Some(ip("10.244.3.2")))
                .collect::<Vec<_>>(),
            vec![ip("10.244.3.2")]
        );
        // A gateway elsewhere frees .1 for pods.
        let r = Range::new(net("10.244.3.0/30"), None, None, Some(ip("10.244.3.2"))).unwrap();
        let pool = Pool::new(vec![r], vec![]).unwrap();
        assert_eq!(
            pool.candidates_after(None).collect::<Vec<_>>(),
            vec![ip("10.244.3.1")]
        );
    }

    #[test]
    fn reservations_parse_display_and_are_skipped() {
        assert_eq!(resv("10.244.1.10"), Reservation::single(ip("10.244.1.10")));
        let span = resv("10.244.1.20-10.244.1.30");
        assert_eq!(
            (span.first(), span.last()),
            (ip("10.244.1.20"), ip("10.244.1.30"))
        );
        assert_eq!(span.to_string(), "10.244.1.20-10.244.1.30");
        assert_eq!(resv(" 10.244.1.20 - 10.244.1.30 "), span);
        for bad in [
            "",
            "x",
            "10.244.1.30-10.244.1.20",
            "10.0.0.1-",
            "10.0.0.1-10.0.0.2-10.0.0.3",
        ] {
            let err = bad.parse::<Reservation>().unwrap_err();
            assert!(
                matches!(err, PoolError::BadReservation { .. }),
                "{bad}: {err}"
            );
        }
        let json = serde_json::to_string(&span).unwrap();
        assert_eq!(json, "\"10.244.1.20-10.244.1.30\"");
        assert_eq!(serde_json::from_str::<Reservation>(&json).unwrap(), span);

        let pool = Pool::new(
            vec![range("10.244.1.0/24")],
            vec![
                resv("10.244.1.10"),
                span,
                resv("10.244.1.25-10.244.1.35"),
                resv("10.244.9.1"),
            ],
        )
        .unwrap();
        // 253 minus .10 minus .20-.35 (16 addresses; the overlapping spans merge).
        assert_eq!(pool.capacity(), 253 - 1 - 16);
        for a in ["10.244.1.10", "10.244.1.20", "10.244.1.30", "10.244.1.35"] {
            assert!(pool.contains(ip(a)) && !pool.is_allocatable(ip(a)), "{a}");
        }
        assert!(pool.is_allocatable(ip("10.244.1.36")) && pool.is_allocatable(ip("10.244.1.19")));
        let all: Vec<_> = pool
            .candidates_after(Some(ip("10.244.1.9")))
            .take(2)
            .collect();
        assert_eq!(all, vec![ip("10.244.1.11"), ip("10.244.1.12")]);
        assert_eq!(
            pool.candidates_after(Some(ip("10.244.1.19"))).next(),
            Some(ip("10.244.1.36"))
        );
    }

    #[test]
    fn round_robin_wraps_over_ranges() {
        let a = range4("10.244.1.0/24", "10.244.1.10", "10.244.1.12", "10.244.1.1");
        let b = range4("10.244.2.0/24", "10.244.2.1", "10.244.2.3", "10.244.2.1");
        let pool = Pool::new(vec![a, b], vec![]).unwrap();
        assert_eq!(pool.capacity(), 5);
        let order = |last: Option<&str>| {
            pool.candidates_after(last.map(ip))
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
        };
        let all = [
            "10.244.1.10",
            "10.244.1.11",
            "10.244.1.12",
            "10.244.2.2",
            "10.244.2.3",
        ];
        assert_eq!(order(None), all);
        assert_eq!(
            order(Some("10.244.1.11")),
            [
                "10.244.1.12",
                "10.244.2.2",
                "10.244.2.3",
                "10.244.1.10",
                "10.244.1.11"
            ]
        );
        assert_eq!(
            order(Some("10.244.1.12")),
            [
                "10.244.2.2",
                "10.244.2.3",
                "10.244.1.10",
                "10.244.1.11",
                "10.244.1.12"
            ]
        );
        assert_eq!(order(Some("10.244.2.3")), all);
        // The hint is a gateway: start right after it.
        assert_eq!(order(Some("10.244.2.1"))[0], "10.244.2.2");
        // Stale hints (outside every range) restart at the first range.
        assert_eq!(order(Some("192.0.2.1")), all);
        assert_eq!(order(Some("10.244.1.200")), all);
        assert_eq!(
            pool.range_of(ip("10.244.2.2")).unwrap().subnet,
            net("10.244.2.0/24")
        );
        assert_eq!(pool.range_of(ip("10.244.2.4")), None);
    }

    #[test]
    fn configuration_order_is_walk_order() {
        let pool = Pool::new(vec![range("10.244.2.0/30"), range("10.244.1.0/30")], vec![]).unwrap();
        let order: Vec<_> = pool.candidates_after(None).collect();
        assert_eq!(order, vec![ip("10.244.2.2"), ip("10.244.1.2")]);
    }

    #[test]
    fn gateway_of_one_range_is_never_handed_out_by_another() {
        let a = range4("10.244.0.0/16", "10.244.0.1", "10.244.0.255", "10.244.1.1");
        let b = range4("10.244.0.0/16", "10.244.1.1", "10.244.1.3", "10.244.0.1");
        let pool = Pool::new(vec![a, b], vec![]).unwrap();
        assert!(!pool.is_allocatable(ip("10.244.1.1")) && !pool.is_allocatable(ip("10.244.0.1")));
        assert_eq!(pool.capacity(), 255 + 3 - 2);
    }

    #[test]
    fn overlapping_or_missing_ranges_are_refused() {
        assert_eq!(Pool::new(vec![], vec![]).unwrap_err(), PoolError::NoRanges);
        let a = range("10.244.0.0/16");
        let b = range("10.244.1.0/24");
        let err = Pool::new(vec![a.clone(), b], vec![]).unwrap_err();
        assert!(err.to_string().contains("overlaps"), "{err}");
        let touching = range4(
            "10.244.0.0/16",
            "10.244.255.254",
            "10.244.255.254",
            "10.244.0.1",
        );
        let first = range4(
            "10.244.0.0/16",
            "10.244.0.1",
            "10.244.255.253",
            "10.244.0.1",
        );
        assert!(Pool::new(vec![touching.clone(), first.clone()], vec![]).is_ok());
        let clash = range4(
            "10.244.0.0/16",
            "10.244.255.253",
            "10.244.255.254",
            "10.244.0.1",
        );
        assert!(Pool::new(vec![first, clash], vec![]).is_err());
    }

    #[test]
    fn candidates_visit_each_allocatable_address_exactly_once() {
        let pools = [
            Pool::new(vec![range("10.244.1.0/24")], vec![]).unwrap(),
            Pool::new(
                vec![
                    range("10.244.1.0/28"),
                    range("10.244.5.0/29"),
                    range("10.244.3.0/30"),
                ],
                vec![resv("10.244.1.3-10.244.1.5"), resv("10.244.5.6")],
            )
            .unwrap(),
            Pool::new(
                vec![range("10.244.0.0/22")],
                vec![resv("10.244.1.0-10.244.1.255")],
            )
            .unwrap(),
        ];
        for pool in &pools {
            let mut starts: Vec<Option<Ipv4Addr>> = vec![None, Some(ip("192.0.2.1"))];
            for r in pool.ranges() {
                starts.extend(
                    [
                        r.start,
                        r.end,
                        r.gateway,
                        Ipv4Addr::from(u32::from(r.start) + 1),
                    ]
                    .map(Some),
                );
            }
            for last in starts {
                let seen: Vec<Ipv4Addr> = pool.candidates_after(last).collect();
                let distinct: HashSet<_> = seen.iter().copied().collect();
                assert_eq!(seen.len(), pool.capacity() as usize, "after {last:?}");
                assert_eq!(
                    distinct.len(),
                    seen.len(),
                    "after {last:?}: an address came twice"
                );
                assert!(seen.iter().all(|&a| pool.is_allocatable(a)));
                if let Some(l) = last.filter(|&l| pool.is_allocatable(l)) {
                    assert_eq!(seen.last(), Some(&l), "the hint itself comes last");
                }
            }
        }
    }

    /// xorshift64: deterministic, no extra crate.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    /// Drives the allocation policy the record directory uses (first free candidate after
    /// the hint) against an in-memory set, randomly interleaving allocations and releases.
    #[test]
    fn randomized_allocate_release_never_double_allocates() {
        let pool = Pool::new(
            vec![range("10.244.1.0/28"), range("10.244.2.0/29")],
            vec![resv("10.244.1.4-10.244.1.6")],
        )
        .unwrap();
        let cap = pool.capacity() as usize;
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut held: Vec<Ipv4Addr> = Vec::new();
        let mut hint = None;
        let mut exhausted_seen = 0;
        for _ in 0..20_000 {
            if rng.next() % 3 < 2 {
                let pick = pool.candidates_after(hint).find(|a| !held.contains(a));
                match pick {
                    Some(a) => {
                        assert!(pool.is_allocatable(a));
                        held.push(a);
                        hint = Some(a);
                    }
                    None => {
                        assert_eq!(held.len(), cap, "exhausted while addresses were free");
                        exhausted_seen += 1;
                    }
                }
            } else if !held.is_empty() {
                let i = (rng.next() % held.len() as u64) as usize;
                held.swap_remove(i);
            }
            let distinct: HashSet<_> = held.iter().collect();
            assert_eq!(distinct.len(), held.len(), "an address is held twice");
            assert!(held.len() <= cap);
        }
        assert!(
            exhausted_seen > 0,
            "the sequence should hit exhaustion at least once"
        );
    }
}
