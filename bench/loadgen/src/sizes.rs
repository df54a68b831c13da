//! Message sizes: one fixed size, or a mix drawn from a measured distribution of real mail.
//!
//! The mix is the cumulative distribution of message sizes (headers included) that a FreeBSD
//! mail relay's logs gave in October 2002 (freebsd-net, osdir.com ml/freebsd.devel.net
//! 2002-10 msg00203), as tabulated by Johannes Buchner, "Modelling realistic email traffic –
//! email size distribution" (2009): the share of messages under each power of two from 2 KiB
//! to 4 MiB. Between two bounds the size is drawn log-uniformly; the first bucket starts at
//! 1 KiB, about what headers alone take. Its median is about 4.1 KiB and its mean about 52 KiB,
//! 12 times that: most mail is small, and the few large messages carry most of the bytes.

/// (upper bound in bytes, share of messages below it), ascending; the last share is 1.
const MEASURED: [(u64, f64); 12] = [
    (2 << 10, 0.2353),
    (4 << 10, 0.4917),
    (8 << 10, 0.676),
    (16 << 10, 0.7958),
    (32 << 10, 0.8536),
    (64 << 10, 0.9047),
    (128 << 10, 0.933),
    (256 << 10, 0.9574),
    (512 << 10, 0.9724),
    (1 << 20, 0.9849),
    (2 << 20, 0.9996),
    (4 << 20, 1.0),
];

/// The smallest message the mix makes: headers need about this much.
const FLOOR: u64 = 1 << 10;

/// How message sizes are chosen.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Sizes {
    Fixed(u64),
    /// The measured mix, no message above the cap.
    Mix {
        cap: u64,
    },
}

impl Sizes {
    /// `mix` or a number of bytes.
    pub fn parse(text: &str, cap: u64) -> Result<Sizes, String> {
        match text {
            "mix" => Ok(Sizes::Mix { cap }),
            bytes => bytes
                .parse()
                .map(Sizes::Fixed)
                .map_err(|_| format!("--size {bytes:?}: a number of bytes, or \"mix\"")),
        }
    }

    /// The size of a message, given a uniform draw `u` in [0, 1).
    pub fn size(&self, u: f64) -> u64 {
        match *self {
            Sizes::Fixed(bytes) => bytes,
            Sizes::Mix { cap } => mix(u).min(cap),
        }
    }

    /// The largest size this can give: the filler the messages are cut from is this long.
    pub fn largest(&self) -> u64 {
        match *self {
            Sizes::Fixed(bytes) => bytes,
            Sizes::Mix { cap } => cap.min(MEASURED[MEASURED.len() - 1].0),
        }
    }
}

/// The inverse of the measured distribution, interpolated log-uniformly within a bucket.
fn mix(u: f64) -> u64 {
    let mut lower = (FLOOR, 0.0);
    for (bound, share) in MEASURED {
        if u < share {
            let within = (u - lower.1) / (share - lower.1);
            let (low, high) = (lower.0 as f64, bound as f64);
            return (low * (high / low).powf(within)) as u64;
        }
        lower = (bound, share);
    }
    lower.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mix_gives_each_bucket_its_measured_share() {
        let sizes = Sizes::Mix { cap: u64::MAX };
        let draws = 100_000;
        let mut below = [0usize; MEASURED.len()];
        for i in 0..draws {
            let size = sizes.size((i as f64 + 0.5) / draws as f64);
            assert!((FLOOR..=4 << 20).contains(&size), "{size}");
            for (count, (bound, _)) in below.iter_mut().zip(MEASURED) {
                *count += usize::from(size < bound);
            }
        }
        for (count, (bound, share)) in below.iter().zip(MEASURED) {
            let measured = *count as f64 / draws as f64;
            assert!((measured - share).abs() < 0.001, "under {bound}: {measured} vs {share}");
        }
    }

    #[test]
    fn a_cap_and_a_fixed_size_bound_what_is_drawn() {
        assert_eq!(Sizes::parse("mix", 65536).unwrap().size(0.9999), 65536);
        assert_eq!(Sizes::parse("4096", 0).unwrap().size(0.3), 4096);
        assert_eq!(Sizes::Mix { cap: 1 << 30 }.largest(), 4 << 20);
        assert!(Sizes::parse("4k", 0).is_err());
        assert!(mix(0.0) >= FLOOR && mix(0.5) > 4 << 10 && mix(0.5) < 8 << 10);
    }
}
