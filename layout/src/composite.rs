//! Composite layouts (Lustre's progressive file layouts): ordered components `[start, end)`
//! covering the whole file, each with its own striping. A plain layout is the special case
//! of one component covering `[0, EOF)`.

use crate::error::LayoutError;
use crate::limits::{EOF_OFFSET_BYTES, MAX_COMPONENTS};
use crate::stripe::StripeLayout;

/// One component: the file bytes `[start_bytes, end_bytes)` and how they are striped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Component {
    /// First file offset of the component.
    pub start_bytes: u64,
    /// One past its last file offset; [`EOF_OFFSET_BYTES`] for the last component.
    pub end_bytes: u64,
    /// Its striping.
    pub stripe: StripeLayout,
}

impl Component {
    /// Bundles an extent and a striping; [`Layout::composite`] checks them.
    pub fn new(start_bytes: u64, end_bytes: u64, stripe: StripeLayout) -> Self {
        Self {
            start_bytes,
            end_bytes,
            stripe,
        }
    }
}

/// A file's layout: one or more components covering `[0, EOF)` without gap or overlap.
///
/// Invariants, checked by the constructors and by every decoder: 1 to [`MAX_COMPONENTS`]
/// components; the first starts at 0, each starts where the previous ended and is not
/// empty, the last ends at [`EOF_OFFSET_BYTES`]; every boundary other than EOF is a multiple
/// of the stripe sizes of both components it separates. A plain layout has exactly one
/// component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    components: Vec<Component>,
    is_composite: bool,
    generation: u32,
}

impl Layout {
    /// A plain (non-composite) layout: one striping over the whole file.
    pub fn plain(stripe: StripeLayout) -> Self {
        Self {
            components: vec![Component::new(0, EOF_OFFSET_BYTES, stripe)],
            is_composite: false,
            generation: 0,
        }
    }

    /// A composite layout from its components, in file order.
    pub fn composite(components: Vec<Component>) -> Result<Self, LayoutError> {
        check_components(&components)?;
        Ok(Self {
            components,
            is_composite: true,
            generation: 0,
        })
    }

    /// Builds a plain or composite layout, checking the components; a plain one must be a
    /// single component `[0, EOF)`. Decoders use this.
    pub fn from_components(
        components: Vec<Component>,
        is_composite: bool,
        generation: u32,
    ) -> Result<Self, LayoutError> {
        check_components(&components)?;
        if !is_composite && components.len() != 1 {
            return Err(LayoutError::PlainNotSingleComponent {
                component_count: components.len(),
            });
        }
        Ok(Self {
            components,
            is_composite,
            generation,
        })
    }

    /// The same layout with a layout generation (Lustre's `lcm_layout_gen` /
    /// `lmm_layout_gen`, bumped by whoever changes the layout).
    #[must_use]
    pub fn with_generation(mut self, generation: u32) -> Self {
        self.generation = generation;
        self
    }

    /// The layout generation.
    pub fn generation(&self) -> u32 {
        self.generation
    }

    /// Whether the layout was built as composite (its text form then lists components).
    pub fn is_composite(&self) -> bool {
        self.is_composite
    }

    /// The components, in file order (at least one).
    pub fn components(&self) -> &[Component] {
        &self.components
    }

    /// One component by index.
    pub fn component(&self, component: u16) -> Option<&Component> {
        self.components.get(usize::from(component))
    }

    /// Number of components (1..=[`MAX_COMPONENTS`]).
    pub fn component_count(&self) -> u16 {
        // At most MAX_COMPONENTS by construction.
        self.components.len() as u16
    }
}

fn check_components(components: &[Component]) -> Result<(), LayoutError> {
    if components.is_empty() {
        return Err(LayoutError::NoComponents);
    }
    if components.len() > MAX_COMPONENTS {
        return Err(LayoutError::TooManyComponents {
            count: components.len(),
            max: MAX_COMPONENTS,
        });
    }
    let mut expected_start_bytes = 0;
    for (index, component) in components.iter().enumerate() {
        if component.start_bytes != expected_start_bytes {
            return Err(LayoutError::ComponentNotContiguous {
                component: index,
                start_bytes: component.start_bytes,
                expected_start_bytes,
            });
        }
        if component.end_bytes <= component.start_bytes {
            return Err(LayoutError::ComponentEmpty {
                component: index,
                start_bytes: component.start_bytes,
                end_bytes: component.end_bytes,
            });
        }
        let is_last = index + 1 == components.len();
        if is_last {
            if component.end_bytes != EOF_OFFSET_BYTES {
                return Err(LayoutError::LastComponentNotEof {
                    end_bytes: component.end_bytes,
                });
            }
        } else {
            // An interior end at EOF is caught here too: no stripe size divides u64::MAX.
            for neighbour in [index, index + 1] {
                let stripe_size_bytes = components[neighbour].stripe.stripe_size_bytes();
                if !component.end_bytes.is_multiple_of(stripe_size_bytes) {
                    return Err(LayoutError::UnalignedBoundary {
                        component: index,
                        end_bytes: component.end_bytes,
                        stripe_size_bytes,
                        aligned_to_component: neighbour,
                    });
                }
            }
        }
        expected_start_bytes = component.end_bytes;
    }
    assert_eq!(expected_start_bytes, EOF_OFFSET_BYTES);
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

    fn stripe(stripe_size_bytes: u64, stripe_count: u32) -> StripeLayout {
        StripeLayout::new(stripe_size_bytes, (0..stripe_count).collect(), None, false)
            .expect("valid striping")
    }

    #[test]
    fn valid_composite() {
        let layout = Layout::composite(vec![
            Component::new(0, 4 * MIB, stripe(MIB, 1)),
            Component::new(4 * MIB, 64 * MIB, stripe(4 * MIB, 4)),
            Component::new(64 * MIB, EOF_OFFSET_BYTES, stripe(MIB, 8)),
        ])
        .expect("valid layout");
        assert!(layout.is_composite());
        assert_eq!(layout.component_count(), 3);
        assert_eq!(layout.component(1).map(|c| c.start_bytes), Some(4 * MIB));
        assert!(layout.component(3).is_none());
        let plain = Layout::plain(stripe(MIB, 2));
        assert!(!plain.is_composite());
        assert_eq!(plain.components()[0].end_bytes, EOF_OFFSET_BYTES);
    }

    #[test]
    fn gap_and_overlap() {
        let gap = Layout::composite(vec![
            Component::new(0, 4 * MIB, stripe(MIB, 1)),
            Component::new(5 * MIB, EOF_OFFSET_BYTES, stripe(MIB, 1)),
        ]);
        assert_eq!(
            gap.unwrap_err(),
            LayoutError::ComponentNotContiguous {
                component: 1,
                start_bytes: 5 * MIB,
                expected_start_bytes: 4 * MIB
            }
        );
        let overlap = Layout::composite(vec![
            Component::new(0, 4 * MIB, stripe(MIB, 1)),
            Component::new(3 * MIB, EOF_OFFSET_BYTES, stripe(MIB, 1)),
        ]);
        assert!(matches!(
            overlap.unwrap_err(),
            LayoutError::ComponentNotContiguous { component: 1, .. }
        ));
        let late_start =
            Layout::composite(vec![Component::new(MIB, EOF_OFFSET_BYTES, stripe(MIB, 1))]);
        assert!(matches!(
            late_start.unwrap_err(),
            LayoutError::ComponentNotContiguous {
                component: 0,
                expected_start_bytes: 0,
                ..
            }
        ));
    }

    #[test]
    fn unaligned_boundaries() {
        let own = Layout::composite(vec![
            Component::new(0, 3 * MIB, stripe(2 * MIB, 1)),
            Component::new(3 * MIB, EOF_OFFSET_BYTES, stripe(MIB, 1)),
        ]);
        assert_eq!(
            own.unwrap_err(),
            LayoutError::UnalignedBoundary {
                component: 0,
                end_bytes: 3 * MIB,
                stripe_size_bytes: 2 * MIB,
                aligned_to_component: 0
            }
        );
        let next = Layout::composite(vec![
            Component::new(0, 3 * MIB, stripe(MIB, 1)),
            Component::new(3 * MIB, EOF_OFFSET_BYTES, stripe(2 * MIB, 1)),
        ]);
        assert!(matches!(
            next.unwrap_err(),
            LayoutError::UnalignedBoundary {
                aligned_to_component: 1,
                ..
            }
        ));
    }

    #[test]
    fn last_not_eof_empty_none_too_many() {
        let short = Layout::composite(vec![Component::new(0, 4 * MIB, stripe(MIB, 1))]);
        assert_eq!(
            short.unwrap_err(),
            LayoutError::LastComponentNotEof { end_bytes: 4 * MIB }
        );
        let empty = Layout::composite(vec![
            Component::new(0, 0, stripe(MIB, 1)),
            Component::new(0, EOF_OFFSET_BYTES, stripe(MIB, 1)),
        ]);
        assert!(matches!(
            empty.unwrap_err(),
            LayoutError::ComponentEmpty { component: 0, .. }
        ));
        let early_eof = Layout::composite(vec![
            Component::new(0, EOF_OFFSET_BYTES, stripe(MIB, 1)),
            Component::new(EOF_OFFSET_BYTES, EOF_OFFSET_BYTES, stripe(MIB, 1)),
        ]);
        assert!(matches!(
            early_eof.unwrap_err(),
            LayoutError::UnalignedBoundary {
                component: 0,
                end_bytes: EOF_OFFSET_BYTES,
                ..
            }
        ));
        assert_eq!(
            Layout::composite(vec![]).unwrap_err(),
            LayoutError::NoComponents
        );

        let mut components: Vec<Component> = (0..65u64)
            .map(|index| Component::new(index * MIB, (index + 1) * MIB, stripe(MIB, 1)))
            .collect();
        if let Some(last) = components.last_mut() {
            last.end_bytes = EOF_OFFSET_BYTES;
        }
        assert_eq!(
            Layout::composite(components.clone()).unwrap_err(),
            LayoutError::TooManyComponents { count: 65, max: 64 }
        );
        components.remove(0);
        components[0].start_bytes = 0;
        Layout::composite(components).expect("64 components are allowed");
    }

    #[test]
    fn plain_must_be_single() {
        let components = vec![
            Component::new(0, MIB, stripe(MIB, 1)),
            Component::new(MIB, EOF_OFFSET_BYTES, stripe(MIB, 1)),
        ];
        assert_eq!(
            Layout::from_components(components, false, 0).unwrap_err(),
            LayoutError::PlainNotSingleComponent { component_count: 2 }
        );
    }
}
