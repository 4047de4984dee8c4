//! Latency histogram: log-linear buckets, mergeable across threads.

/// Linear sub-buckets per power of two: 2^5 = 32, so a value is known within ~3 %.
pub(crate) const SUB_BITS: u32 = 5;
pub(crate) const SUB: usize = 1 << SUB_BITS;
pub(crate) const BUCKETS: usize = (64 - SUB_BITS as usize + 1) * SUB;

/// A log-linear histogram of u64 values (microseconds here): exact below 32, then 32
/// linear buckets per power of two. Fixed size, no allocation per sample, mergeable.
#[derive(Clone)]
pub(crate) struct Histogram {
    pub(crate) counts: Vec<u64>,
    pub(crate) total: u64,
    pub(crate) sum: u128,
    pub(crate) min: u64,
    pub(crate) max: u64,
}

impl Histogram {
    pub(crate) fn new() -> Self {
        Histogram {
            counts: vec![0; BUCKETS],
            total: 0,
            sum: 0,
            min: u64::MAX,
            max: 0,
        }
    }

    pub(crate) fn index(v: u64) -> usize {
        if v < SUB as u64 {
            return v as usize;
        }
        let top = 63 - v.leading_zeros(); // >= SUB_BITS
        let shift = top - SUB_BITS;
        let mantissa = (v >> shift) as usize; // in SUB ..< 2 * SUB
        (shift as usize + 1) * SUB + (mantissa - SUB)
    }

    /// Smallest value that lands in bucket `i`.
    pub(crate) fn lower(i: usize) -> u64 {
        if i < SUB {
            return i as u64;
        }
        let group = i / SUB;
        ((i % SUB + SUB) as u64) << (group - 1)
    }

    /// Largest value that lands in bucket `i`.
    pub(crate) fn upper(i: usize) -> u64 {
        if i + 1 >= BUCKETS {
            u64::MAX
        } else {
            Self::lower(i + 1) - 1
        }
    }

    pub(crate) fn record(&mut self, v: u64) {
        self.counts[Self::index(v)] += 1;
        self.total += 1;
        self.sum += u128::from(v);
        self.min = self.min.min(v);
        self.max = self.max.max(v);
    }

    pub(crate) fn merge(&mut self, o: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&o.counts) {
            *a += b;
        }
        self.total += o.total;
        self.sum += o.sum;
        self.min = self.min.min(o.min);
        self.max = self.max.max(o.max);
    }

    /// The value at quantile `q` (0..=1): the middle of its bucket, clamped to the
    /// observed range so that a single sample reports itself exactly. 0 when empty.
    pub(crate) fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        if rank == self.total {
            return self.max;
        }
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let lo = Self::lower(i);
                let mid = lo + (Self::upper(i) - lo) / 2;
                return mid.clamp(self.min, self.max);
            }
        }
        self.max
    }

    pub(crate) fn mean(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.sum as f64 / self.total as f64
        }
    }

    pub(crate) fn max_or_zero(&self) -> u64 {
        if self.total == 0 {
            0
        } else {
            self.max
        }
    }
}
