//! Object ids, derived from the file id, the component and the stripe, so that no
//! per-object record is kept: `file_id << 24 | component << 16 | stripe`.

use crate::error::LayoutError;
use crate::limits::{
    MAX_FILE_ID, MAX_OBJECT_ID_COMPONENT, MAX_OBJECT_ID_STRIPE, OBJECT_ID_COMPONENT_BITS,
    OBJECT_ID_STRIPE_BITS,
};

const COMPONENT_SHIFT: u32 = OBJECT_ID_STRIPE_BITS;
const FILE_SHIFT: u32 = OBJECT_ID_STRIPE_BITS + OBJECT_ID_COMPONENT_BITS;

/// The object id of stripe `stripe` of component `component` of file `file_id`.
pub fn object_id(file_id: u64, component: u16, stripe: u32) -> Result<u64, LayoutError> {
    if file_id > MAX_FILE_ID {
        return Err(LayoutError::InvalidField {
            field: "file_id",
            value: file_id.to_string(),
            allowed: "0..=1099511627775 (2^40 - 1)",
        });
    }
    if component > MAX_OBJECT_ID_COMPONENT {
        return Err(LayoutError::InvalidField {
            field: "component",
            value: component.to_string(),
            allowed: "0..=255",
        });
    }
    if stripe > MAX_OBJECT_ID_STRIPE {
        return Err(LayoutError::InvalidField {
            field: "stripe",
            value: stripe.to_string(),
            allowed: "0..=65535",
        });
    }
    Ok(pack(file_id, component, stripe))
}

/// Packs parts already known to be in range; the mapping hot path uses this.
#[inline]
pub(crate) fn pack(file_id: u64, component: u16, stripe: u32) -> u64 {
    debug_assert!(file_id <= MAX_FILE_ID);
    debug_assert!(component <= MAX_OBJECT_ID_COMPONENT);
    debug_assert!(stripe <= MAX_OBJECT_ID_STRIPE);
    (file_id << FILE_SHIFT) | (u64::from(component) << COMPONENT_SHIFT) | u64::from(stripe)
}

/// The `(file_id, component, stripe)` an object id was derived from.
pub fn object_id_parts(object_id: u64) -> (u64, u16, u32) {
    let file_id = object_id >> FILE_SHIFT;
    let component = ((object_id >> COMPONENT_SHIFT) & u64::from(MAX_OBJECT_ID_COMPONENT)) as u16;
    let stripe = (object_id & u64::from(MAX_OBJECT_ID_STRIPE)) as u32;
    (file_id, component, stripe)
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    reason = "a test fails loudly on an unexpected result"
)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_edges() {
        for (file_id, component, stripe) in [
            (0, 0, 0),
            (MAX_FILE_ID, 255, 65535),
            (1, 2, 3),
            (12345, 0, 1999),
        ] {
            let id = object_id(file_id, component, stripe).expect("parts in range");
            assert_eq!(object_id_parts(id), (file_id, component, stripe));
        }
        assert_eq!(object_id(MAX_FILE_ID, 255, 65535), Ok(u64::MAX));
    }

    #[test]
    fn out_of_range_parts() {
        for (file_id, component, stripe, field) in [
            (MAX_FILE_ID + 1, 0, 0, "file_id"),
            (0, 256, 0, "component"),
            (0, 0, 65536, "stripe"),
        ] {
            match object_id(file_id, component, stripe) {
                Err(LayoutError::InvalidField { field: found, .. }) => assert_eq!(found, field),
                other => panic!("expected an error on {field}, got {other:?}"),
            }
        }
    }
}
