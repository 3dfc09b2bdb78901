//! Plain striping: the request a user makes ([`StripeSpec`]) and the striping a file has
//! ([`StripeLayout`]), with Lustre's rules for both.

use std::fmt;

use crate::error::LayoutError;
use crate::limits::{
    DEFAULT_STRIPE_SIZE_BYTES, MAX_POOL_NAME_BYTES, MAX_STRIPE_COUNT, MAX_STRIPE_SIZE_BYTES,
    STRIPE_COUNT_ALL, STRIPE_INDEX_ANY, STRIPE_SIZE_UNIT_BYTES,
};

/// A validated pool name: 1 to [`MAX_POOL_NAME_BYTES`] characters of `[A-Za-z0-9_.-]`
/// (Lustre's rule).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PoolName(String);

impl PoolName {
    /// Checks `name` against Lustre's pool name rule.
    pub fn new(name: &str) -> Result<Self, LayoutError> {
        let allowed_chars = name
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'_' | b'.' | b'-'));
        if name.is_empty() || name.len() > MAX_POOL_NAME_BYTES || !allowed_chars {
            return Err(LayoutError::InvalidField {
                field: "pool",
                value: format!("{name:?}"),
                allowed: "1 to 15 characters of [A-Za-z0-9_.-]",
            });
        }
        Ok(Self(name.to_owned()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PoolName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Checks a stripe size: a non-zero multiple of [`STRIPE_SIZE_UNIT_BYTES`], at most
/// [`MAX_STRIPE_SIZE_BYTES`].
pub fn check_stripe_size(stripe_size_bytes: u64) -> Result<(), LayoutError> {
    if stripe_size_bytes == 0
        || stripe_size_bytes > MAX_STRIPE_SIZE_BYTES
        || !stripe_size_bytes.is_multiple_of(STRIPE_SIZE_UNIT_BYTES)
    {
        return Err(LayoutError::InvalidField {
            field: "stripe_size_bytes",
            value: stripe_size_bytes.to_string(),
            allowed: "a non-zero multiple of 65536, at most 4294967296",
        });
    }
    Ok(())
}

fn check_stripe_count(stripe_count: u64) -> Result<(), LayoutError> {
    if stripe_count == 0 || stripe_count > u64::from(MAX_STRIPE_COUNT) {
        return Err(LayoutError::InvalidField {
            field: "stripe_count",
            value: stripe_count.to_string(),
            allowed: "1..=2000",
        });
    }
    Ok(())
}

/// A striping request, what `lfs setstripe` takes.
///
/// The default is Lustre's: 1 MiB stripes, one stripe, first target picked by the caller,
/// no pool, no overstriping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StripeSpec {
    /// Bytes per stripe unit: a non-zero multiple of 64 KiB, at most 4 GiB.
    pub stripe_size_bytes: u64,
    /// Number of stripes, `1..=MAX_STRIPE_COUNT`, or [`STRIPE_COUNT_ALL`] (-1) for every
    /// target of the pool.
    pub stripe_count: i32,
    /// Target id of the first stripe, or [`STRIPE_INDEX_ANY`] (-1) to let the caller pick
    /// (the metadata service balances usage). Wide enough for every `u32` target id.
    pub stripe_index: i64,
    /// The pool the targets come from, if any.
    pub pool: Option<String>,
    /// Whether several stripes may land on one target.
    pub overstriping: bool,
}

impl Default for StripeSpec {
    fn default() -> Self {
        Self {
            stripe_size_bytes: DEFAULT_STRIPE_SIZE_BYTES,
            stripe_count: 1,
            stripe_index: STRIPE_INDEX_ANY,
            pool: None,
            overstriping: false,
        }
    }
}

impl StripeSpec {
    /// Resolves the request against the ordered targets of its pool (all targets when there
    /// is no pool): stripes take targets round-robin from the position of `stripe_index`, or
    /// of `first_target_pick` when the index is [`STRIPE_INDEX_ANY`]. More stripes than
    /// targets wrap around only with overstriping.
    pub fn resolve(
        &self,
        pool_targets: &[u32],
        first_target_pick: u32,
    ) -> Result<StripeLayout, LayoutError> {
        check_stripe_size(self.stripe_size_bytes)?;
        let pool = self.pool.as_deref().map(PoolName::new).transpose()?;
        if self.stripe_count != STRIPE_COUNT_ALL {
            let stripe_count =
                u64::try_from(self.stripe_count).map_err(|_| LayoutError::InvalidField {
                    field: "stripe_count",
                    value: self.stripe_count.to_string(),
                    allowed: "1..=2000, or -1 for every target of the pool",
                })?;
            check_stripe_count(stripe_count)?;
        }
        let (field, first_target_id) = if self.stripe_index == STRIPE_INDEX_ANY {
            ("first_target_pick", first_target_pick)
        } else {
            let target_id =
                u32::try_from(self.stripe_index).map_err(|_| LayoutError::InvalidField {
                    field: "stripe_index",
                    value: self.stripe_index.to_string(),
                    allowed: "a target id (0..=4294967295), or -1 to let the caller pick",
                })?;
            ("stripe_index", target_id)
        };
        if pool_targets.is_empty() {
            return Err(LayoutError::EmptyPool);
        }
        let first_position = pool_targets
            .iter()
            .position(|&target_id| target_id == first_target_id)
            .ok_or(LayoutError::TargetNotInPool {
                field,
                target_id: first_target_id,
            })?;

        let stripe_count = if self.stripe_count == STRIPE_COUNT_ALL {
            pool_targets.len()
        } else {
            // Checked above: 1..=MAX_STRIPE_COUNT.
            self.stripe_count.unsigned_abs() as usize
        };
        if stripe_count > pool_targets.len() && !self.overstriping {
            return Err(LayoutError::PoolTooSmall {
                stripe_count: u32::try_from(stripe_count).unwrap_or(u32::MAX),
                pool_target_count: pool_targets.len(),
            });
        }
        // A pool wider than the stripe count limit cannot be taken whole.
        check_stripe_count(stripe_count as u64)?;

        let target_ids: Vec<u32> = (0..stripe_count)
            .map(|stripe| pool_targets[(first_position + stripe) % pool_targets.len()])
            .collect();
        assert_eq!(target_ids.len(), stripe_count);
        assert_eq!(target_ids[0], first_target_id);
        StripeLayout::new(self.stripe_size_bytes, target_ids, pool, self.overstriping)
    }
}

/// The striping a file (or one component of it) has: a stripe size and one target per
/// stripe, in stripe order.
///
/// Invariants, checked by [`StripeLayout::new`]: a valid stripe size, 1 to
/// [`MAX_STRIPE_COUNT`] targets, no target twice unless overstriping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StripeLayout {
    stripe_size_bytes: u64,
    target_ids: Vec<u32>,
    pool: Option<PoolName>,
    overstriping: bool,
}

impl StripeLayout {
    /// Validates and builds a striping.
    pub fn new(
        stripe_size_bytes: u64,
        target_ids: Vec<u32>,
        pool: Option<PoolName>,
        overstriping: bool,
    ) -> Result<Self, LayoutError> {
        check_stripe_size(stripe_size_bytes)?;
        check_stripe_count(target_ids.len() as u64)?;
        if !overstriping {
            check_no_duplicate_target(&target_ids)?;
        }
        Ok(Self {
            stripe_size_bytes,
            target_ids,
            pool,
            overstriping,
        })
    }

    /// Bytes per stripe unit.
    pub fn stripe_size_bytes(&self) -> u64 {
        self.stripe_size_bytes
    }

    /// Number of stripes (at least 1).
    pub fn stripe_count(&self) -> u32 {
        // At most MAX_STRIPE_COUNT by construction.
        self.target_ids.len() as u32
    }

    /// The target of each stripe, in stripe order.
    pub fn target_ids(&self) -> &[u32] {
        &self.target_ids
    }

    /// The target of the first stripe (`lmm_stripe_offset`).
    pub fn first_target_id(&self) -> u32 {
        self.target_ids[0]
    }

    /// The pool the targets came from, if any.
    pub fn pool(&self) -> Option<&PoolName> {
        self.pool.as_ref()
    }

    /// Whether several stripes may be on one target.
    pub fn overstriping(&self) -> bool {
        self.overstriping
    }
}

fn check_no_duplicate_target(target_ids: &[u32]) -> Result<(), LayoutError> {
    let mut by_target: Vec<(u32, u32)> = target_ids
        .iter()
        .enumerate()
        .map(|(stripe, &target_id)| (target_id, stripe as u32))
        .collect();
    by_target.sort_unstable();
    for pair in by_target.windows(2) {
        if pair[0].0 == pair[1].0 {
            return Err(LayoutError::DuplicateTarget {
                target_id: pair[0].0,
                first_stripe: pair[0].1,
                second_stripe: pair[1].1,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    reason = "a test fails loudly on an unexpected result"
)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    fn spec(stripe_count: i32, stripe_index: i64) -> StripeSpec {
        StripeSpec {
            stripe_size_bytes: MIB,
            stripe_count,
            stripe_index,
            pool: None,
            overstriping: false,
        }
    }

    fn field_of(error: LayoutError) -> &'static str {
        match error {
            LayoutError::InvalidField { field, .. } => field,
            other => panic!("expected InvalidField, got {other:?}"),
        }
    }

    #[test]
    fn resolve_round_robin_from_index() {
        let layout = spec(3, 7).resolve(&[5, 6, 7, 8], 0).expect("valid spec");
        assert_eq!(layout.target_ids(), &[7, 8, 5]);
        assert_eq!(layout.stripe_count(), 3);
        assert_eq!(layout.first_target_id(), 7);
    }

    #[test]
    fn resolve_any_index_uses_pick() {
        let layout = spec(2, -1).resolve(&[5, 6, 7], 7).expect("valid spec");
        assert_eq!(layout.target_ids(), &[7, 5]);
        let error = spec(2, -1).resolve(&[5, 6, 7], 9).unwrap_err();
        assert_eq!(
            error,
            LayoutError::TargetNotInPool {
                field: "first_target_pick",
                target_id: 9
            }
        );
    }

    #[test]
    fn resolve_count_all() {
        let layout = spec(-1, 6).resolve(&[5, 6, 7], 0).expect("valid spec");
        assert_eq!(layout.target_ids(), &[6, 7, 5]);
    }

    #[test]
    fn resolve_count_above_pool() {
        let error = spec(4, 5).resolve(&[5, 6, 7], 0).unwrap_err();
        assert_eq!(
            error,
            LayoutError::PoolTooSmall {
                stripe_count: 4,
                pool_target_count: 3
            }
        );
        let mut over = spec(5, 6);
        over.overstriping = true;
        let layout = over.resolve(&[5, 6, 7], 0).expect("overstriping wraps");
        assert_eq!(layout.target_ids(), &[6, 7, 5, 6, 7]);
        assert!(layout.overstriping());
    }

    #[test]
    fn resolve_bad_counts() {
        assert_eq!(
            field_of(spec(0, 5).resolve(&[5], 0).unwrap_err()),
            "stripe_count"
        );
        assert_eq!(
            field_of(spec(-2, 5).resolve(&[5], 0).unwrap_err()),
            "stripe_count"
        );
        assert_eq!(
            field_of(spec(2001, 5).resolve(&[5], 0).unwrap_err()),
            "stripe_count"
        );
        let wide: Vec<u32> = (0..2001).collect();
        assert_eq!(
            field_of(spec(-1, 0).resolve(&wide, 0).unwrap_err()),
            "stripe_count"
        );
    }

    #[test]
    fn resolve_bad_index() {
        assert_eq!(
            spec(1, 9).resolve(&[5, 6], 0).unwrap_err(),
            LayoutError::TargetNotInPool {
                field: "stripe_index",
                target_id: 9
            }
        );
        assert_eq!(
            field_of(spec(1, -2).resolve(&[5], 0).unwrap_err()),
            "stripe_index"
        );
        assert_eq!(
            field_of(spec(1, 1 << 32).resolve(&[5], 0).unwrap_err()),
            "stripe_index"
        );
        assert_eq!(
            spec(1, 5).resolve(&[], 0).unwrap_err(),
            LayoutError::EmptyPool
        );
    }

    #[test]
    fn resolve_duplicates_in_pool() {
        let error = spec(3, 1).resolve(&[1, 2, 1], 0).unwrap_err();
        assert!(matches!(
            error,
            LayoutError::DuplicateTarget { target_id: 1, .. }
        ));
    }

    #[test]
    fn stripe_size_rules() {
        for bad in [
            0,
            1,
            65535,
            65537,
            3 * 65536 + 1,
            4 * 1024 * MIB + 65536,
            u64::MAX,
        ] {
            let mut request = spec(1, 0);
            request.stripe_size_bytes = bad;
            assert_eq!(
                field_of(request.resolve(&[0], 0).unwrap_err()),
                "stripe_size_bytes"
            );
            assert_eq!(
                field_of(StripeLayout::new(bad, vec![0], None, false).unwrap_err()),
                "stripe_size_bytes"
            );
        }
        for good in [65536, 3 * 65536, MIB, 4 * 1024 * MIB] {
            StripeLayout::new(good, vec![0], None, false).expect("valid stripe size");
        }
    }

    #[test]
    fn pool_name_rules() {
        for bad in ["", "sixteen_chars_xx", "a b", "pool/1", "é", "a:b"] {
            assert_eq!(field_of(PoolName::new(bad).unwrap_err()), "pool");
            let mut request = spec(1, 0);
            request.pool = Some(bad.to_owned());
            assert_eq!(field_of(request.resolve(&[0], 0).unwrap_err()), "pool");
        }
        for good in ["fast", "a", "fifteen_chars.-", "A9_.-"] {
            assert_eq!(PoolName::new(good).expect("valid pool name").as_str(), good);
        }
    }

    #[test]
    fn new_rules() {
        assert_eq!(
            field_of(StripeLayout::new(MIB, vec![], None, false).unwrap_err()),
            "stripe_count"
        );
        let wide: Vec<u32> = (0..2001).collect();
        assert_eq!(
            field_of(StripeLayout::new(MIB, wide, None, false).unwrap_err()),
            "stripe_count"
        );
        assert_eq!(
            StripeLayout::new(MIB, vec![3, 4, 3], None, false).unwrap_err(),
            LayoutError::DuplicateTarget {
                target_id: 3,
                first_stripe: 0,
                second_stripe: 2
            }
        );
        StripeLayout::new(MIB, vec![3, 4, 3], None, true).expect("overstriping allows duplicates");
    }
}
