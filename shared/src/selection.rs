//! Which host serves a `content_request`.
//!
//! `Uniform` picks exactly one host, uniformly among those the visitor did
//! not exclude: each of n hosts serves 1/n of the requests and none is left
//! unanswered. `CoinFlip` is the seed app's rule, kept for comparison: every
//! host passes the request on with probability 1/n, so some requests reach
//! nobody and some reach several.
//!
//! Randomness is an input: the server hands in random numbers, tests hand in
//! chosen ones.

use std::str::FromStr;

/// How the server picks hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Selection {
    #[default]
    Uniform,
    CoinFlip,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("selection is \"uniform\" or \"coin-flip\", not {0:?}")]
pub struct SelectionError(String);

impl FromStr for Selection {
    type Err = SelectionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "uniform" => Ok(Selection::Uniform),
            "coin-flip" => Ok(Selection::CoinFlip),
            other => Err(SelectionError(other.to_string())),
        }
    }
}

impl Selection {
    /// The hosts (indices into `candidates`) that get the request.
    ///
    /// `eligible` says which candidates may be picked; `random` yields
    /// uniformly distributed `u64`s.
    pub fn pick<T>(
        self,
        candidates: &[T],
        eligible: impl Fn(&T) -> bool,
        mut random: impl FnMut() -> u64,
    ) -> Vec<usize> {
        let eligible: Vec<usize> = (0..candidates.len())
            .filter(|&i| eligible(&candidates[i]))
            .collect();
        if eligible.is_empty() {
            return Vec::new();
        }
        let n = eligible.len() as u64;
        match self {
            Selection::Uniform => vec![eligible[below(n, &mut random) as usize]],
            Selection::CoinFlip => eligible
                .into_iter()
                .filter(|_| below(n, &mut random) == 0)
                .collect(),
        }
    }
}

/// A uniform number in `0..n`, without modulo bias.
fn below(n: u64, random: &mut impl FnMut() -> u64) -> u64 {
    // 2^64 mod n: rejecting values below it leaves a range whose length
    // divides evenly by n.
    let threshold = n.wrapping_neg() % n;
    loop {
        let r = random();
        if r >= threshold {
            return r % n;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator (splitmix64) for repeatable tests.
    fn rng(mut state: u64) -> impl FnMut() -> u64 {
        move || {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }
    }

    #[test]
    fn uniform_picks_exactly_one_evenly() {
        let hosts = [0, 1, 2, 3, 4];
        let mut counts = [0u32; 5];
        let mut random = rng(7);
        let rounds = 50_000;
        for _ in 0..rounds {
            let picked = Selection::Uniform.pick(&hosts, |_| true, &mut random);
            assert_eq!(picked.len(), 1);
            counts[picked[0]] += 1;
        }
        let expected = f64::from(rounds) / 5.0;
        let chi2: f64 = counts
            .iter()
            .map(|&c| (f64::from(c) - expected).powi(2) / expected)
            .sum();
        // 4 degrees of freedom: p = 0.001 at 18.47.
        assert!(chi2 < 18.47, "chi-square {chi2} for {counts:?}");
    }

    #[test]
    fn uniform_honours_exclusions() {
        let hosts = [10, 11, 12];
        let mut random = rng(1);
        for _ in 0..1000 {
            assert_eq!(
                Selection::Uniform.pick(&hosts, |&h| h != 10 && h != 12, &mut random),
                [1]
            );
        }
        assert!(
            Selection::Uniform
                .pick(&hosts, |_| false, &mut random)
                .is_empty()
        );
    }

    #[test]
    fn coin_flip_leaves_some_unanswered_and_doubles_others() {
        let hosts = [0, 1];
        let mut random = rng(3);
        let (mut none, mut many) = (0, 0);
        for _ in 0..10_000 {
            match Selection::CoinFlip
                .pick(&hosts, |_| true, &mut random)
                .len()
            {
                0 => none += 1,
                1 => {}
                _ => many += 1,
            }
        }
        // At n = 2 a quarter of requests reach nobody, a quarter both.
        assert!((2200..2800).contains(&none), "{none}");
        assert!((2200..2800).contains(&many), "{many}");
    }

    #[test]
    fn below_rejects_the_values_that_would_bias_it() {
        // 2^64 ≡ 1 (mod 3), so 0 is the one value to reject for n = 3.
        let mut values = [0, 4].into_iter();
        assert_eq!(below(3, &mut || values.next().unwrap_or(0)), 1);
        assert_eq!(values.next(), None, "0 was drawn and rejected");
    }

    #[test]
    fn parses_modes() {
        assert_eq!("uniform".parse(), Ok(Selection::Uniform));
        assert_eq!("coin-flip".parse(), Ok(Selection::CoinFlip));
        assert!("random".parse::<Selection>().is_err());
    }
}
