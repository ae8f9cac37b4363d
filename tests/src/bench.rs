//! What the benchmarks that compare two setups in one run share (TLS and token checks on
//! against plaintext without authentication, in routing's and intake's benches): the
//! percentiles of a run, one line per run, and the median and spread of the p99 ratios.

use std::time::Duration;

/// The `p` percentile (0..=1) of `latencies`, sorting them.
#[must_use]
pub fn percentile(latencies: &mut [Duration], p: f64) -> Duration {
    latencies.sort_unstable();
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let index = ((latencies.len().saturating_sub(1)) as f64 * p).round() as usize;
    latencies.get(index).copied().unwrap_or_default()
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

/// Prints run `run`'s p50 and p99 of both setups and returns the p99 ratio `with / without`.
pub fn report_run(
    run: usize,
    what: &str,
    with: (&str, &mut [Duration]),
    without: (&str, &mut [Duration]),
) -> f64 {
    let (with_name, with) = with;
    let (without_name, without) = without;
    let (w50, w99) = (percentile(with, 0.5), percentile(with, 0.99));
    let (o50, o99) = (percentile(without, 0.5), percentile(without, 0.99));
    let ratio = w99.as_secs_f64() / o99.as_secs_f64().max(f64::MIN_POSITIVE);
    println!(
        "run {run}: {what}: {with_name} p50 {:.3} ms p99 {:.3} ms (n={}); {without_name} p50 \
         {:.3} ms p99 {:.3} ms (n={}); p99 ratio {ratio:.2}",
        ms(w50),
        ms(w99),
        with.len(),
        ms(o50),
        ms(o99),
        without.len(),
    );
    ratio
}

/// Prints the median and spread of `ratios`, against `goal` (at most).
pub fn report_ratios(what: &str, mut ratios: Vec<f64>, goal: f64) {
    ratios.sort_by(f64::total_cmp);
    let Some((low, high)) = ratios.first().zip(ratios.last()) else {
        return;
    };
    let median = ratios[ratios.len() / 2];
    println!(
        "{what}: p99 ratio median {median:.2} over {} runs (spread {low:.2}..{high:.2}); goal <= \
         {goal}: {}",
        ratios.len(),
        if median <= goal { "met" } else { "NOT met" }
    );
}
