//! Latency arithmetic: percentiles, summaries and per-bucket summaries. Pure.

use std::time::Duration;

/// Percentiles of a set of latencies, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Summary {
    pub n: usize,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub min: f64,
    pub max: f64,
    pub mean: f64,
}

/// Nearest-rank percentile (the smallest sample with at least `p`% of samples at or below
/// it) of an ascending slice; 0 for an empty one. Nearest rank never invents a value
/// between two samples, so a p99 of 100 samples is the 99th, not an interpolation.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub fn summarize(samples: &[Duration]) -> Summary {
    let mut v: Vec<f64> = samples.iter().copied().map(ms).collect();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return Summary::default();
    }
    Summary {
        n: v.len(),
        p50: percentile(&v, 50.0),
        p90: percentile(&v, 90.0),
        p99: percentile(&v, 99.0),
        min: v[0],
        max: v[v.len() - 1],
        mean: v.iter().sum::<f64>() / v.len() as f64,
    }
}

/// Summary of the samples from pod `from` to pod `to` (1-based, inclusive), in order.
#[derive(Debug, Clone, PartialEq)]
pub struct Bucket {
    pub from: usize,
    pub to: usize,
    pub summary: Summary,
}

/// Splits samples, in the order they were taken, into consecutive buckets of `size`
/// (the last one may be shorter), so growth with pod count shows.
pub fn buckets(samples: &[Duration], size: usize) -> Vec<Bucket> {
    samples
        .chunks(size.max(1))
        .enumerate()
        .map(|(i, chunk)| Bucket {
            from: i * size.max(1) + 1,
            to: i * size.max(1) + chunk.len(),
            summary: summarize(chunk),
        })
        .collect()
}

/// `a / b`, or NaN when `b` is 0 (nothing measured).
pub fn ratio(a: f64, b: f64) -> f64 {
    if b == 0.0 {
        f64::NAN
    } else {
        a / b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(ms: &[u64]) -> Vec<Duration> {
        ms.iter().map(|m| Duration::from_millis(*m)).collect()
    }

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 90.0), 90.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(percentile(&v, 0.0), 1.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
        // Five samples: p50 is the 3rd, p99 the 5th.
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0, 5.0], 50.0), 3.0);
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0, 5.0], 99.0), 5.0);
    }

    #[test]
    fn summary_sorts_unordered_samples() {
        let s = summarize(&d(&[5, 1, 4, 2, 3]));
        assert_eq!(s.n, 5);
        assert_eq!((s.p50, s.min, s.max, s.mean), (3.0, 1.0, 5.0, 3.0));
        assert_eq!(summarize(&[]), Summary::default());
    }

    #[test]
    fn buckets_keep_order_and_a_short_tail() {
        let b = buckets(&d(&[1, 1, 9, 9, 5]), 2);
        assert_eq!(b.len(), 3);
        assert_eq!((b[0].from, b[0].to, b[0].summary.p50), (1, 2, 1.0));
        assert_eq!((b[1].from, b[1].to, b[1].summary.p50), (3, 4, 9.0));
        assert_eq!((b[2].from, b[2].to, b[2].summary.n), (5, 5, 1));
        assert!(buckets(&[], 100).is_empty());
    }

    #[test]
    fn ratio_of_nothing_is_nan() {
        assert_eq!(ratio(1.0, 4.0), 0.25);
        assert!(ratio(1.0, 0.0).is_nan());
    }
}
