//! Per-stage counters whose names come from one list.

/// Defines a counter enum, its names and a fixed-size counter array type.
///
/// ```
/// pipeline::define_counters! {
///     /// Example stage counters.
///     pub enum DemoCounter, DemoCounters {
///         Seen => "seen",
///         DropBad => "drop_bad",
///     }
/// }
/// let mut c = DemoCounters::default();
/// c.add(DemoCounter::Seen, 2);
/// assert_eq!(c.get(DemoCounter::Seen), 2);
/// assert_eq!(DemoCounter::DropBad.name(), "drop_bad");
/// ```
#[macro_export]
macro_rules! define_counters {
    ($(#[$meta:meta])* $vis:vis enum $name:ident, $set:ident { $($variant:ident => $label:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(usize)]
        $vis enum $name { $($variant),+ }

        impl $name {
            /// Every counter, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            /// Number of counters.
            pub const COUNT: usize = Self::ALL.len();

            /// The counter's stable name, as printed in stats.
            pub const fn name(self) -> &'static str {
                match self { $($name::$variant => $label),+ }
            }
        }

        /// One value per counter of the stage.
        #[derive(Debug, Clone, PartialEq, Eq)]
        $vis struct $set([u64; $name::COUNT]);

        impl Default for $set {
            fn default() -> Self {
                Self([0; $name::COUNT])
            }
        }

        impl $set {
            #[inline]
            pub fn add(&mut self, counter: $name, n: u64) {
                self.0[counter as usize] += n;
            }

            #[inline]
            pub fn get(&self, counter: $name) -> u64 {
                self.0[counter as usize]
            }

            /// `(name, value)` for every counter, in declaration order.
            pub fn iter(&self) -> impl Iterator<Item = ($name, u64)> + '_ {
                $name::ALL.iter().map(move |&c| (c, self.0[c as usize]))
            }
        }
    };
}
