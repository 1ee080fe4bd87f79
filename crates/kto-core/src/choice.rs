//! Settings whose value is one of a fixed set of names (`loss_type`, `lr_scheduler_type`,
//! `kl_estimate`, ...): one enum per setting, parsed at the edge, so every value past parsing is
//! valid and an unknown name is answered with the accepted ones.

/// An unknown value of a choice setting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown value `{got}` for `{setting}` (expected one of: {})", expected.join(", "))]
pub struct UnknownChoice {
    /// The setting (TRL's or transformers' name).
    pub setting: &'static str,
    /// What was given.
    pub got: String,
    /// The accepted names.
    pub expected: &'static [&'static str],
}

/// Reads a setting given as text or as a list of texts (a config file's `[q_proj, v_proj]` for
/// `"q_proj,v_proj"`): the list comes back joined with commas.
///
/// # Errors
/// When the value is neither.
pub fn text_or_list<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Given {
        Text(String),
        List(Vec<String>),
    }
    match serde::Deserialize::deserialize(deserializer)? {
        Given::Text(text) => Ok(text),
        Given::List(items) => Ok(items.join(",")),
    }
}

/// A setting whose values are a fixed set of names (implemented by [`choice!`](crate::choice)).
pub trait Choice: std::str::FromStr<Err = UnknownChoice> + std::fmt::Display + Copy + 'static {
    /// The accepted names, canonical spelling.
    const NAMES: &'static [&'static str];
}

/// Declares a choice setting's enum with its names: `NAMES` (the canonical names, for `--help`),
/// `name()`, `FromStr` (also accepting listed aliases), `Display`, serde as the name, and
/// `Default` when one is named.
///
/// ```
/// kto_core::choice! {
///     /// Colours.
///     pub enum Colour("colour", default = Red) {
///         /// Red.
///         Red = "red",
///         /// Blue (also `navy`).
///         Blue = "blue" | "navy",
///     }
/// }
/// assert_eq!("navy".parse::<Colour>(), Ok(Colour::Blue));
/// assert_eq!(Colour::NAMES, ["red", "blue"]);
/// assert_eq!(Colour::default(), Colour::Red);
/// assert_eq!(
///     "green".parse::<Colour>().unwrap_err().to_string(),
///     "unknown value `green` for `colour` (expected one of: red, blue)"
/// );
/// ```
#[macro_export]
macro_rules! choice {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident($setting:literal $(, default = $default:ident)?) {
            $( $(#[$vmeta:meta])* $variant:ident = $text:literal $(| $alias:literal)* ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        $vis enum $name {
            $( $(#[$vmeta])* $variant, )+
        }

        impl $name {
            /// The accepted names, canonical spelling, in declaration order.
            pub const NAMES: &'static [&'static str] = &[$($text),+];

            /// The setting's name.
            pub const SETTING: &'static str = $setting;

            /// The canonical name of the value.
            pub fn name(self) -> &'static str {
                match self {
                    $( Self::$variant => $text, )+
                }
            }
        }

        $(
            impl Default for $name {
                fn default() -> Self {
                    Self::$default
                }
            }
        )?

        impl $crate::Choice for $name {
            const NAMES: &'static [&'static str] = &[$($text),+];
        }

        impl ::std::str::FromStr for $name {
            type Err = $crate::UnknownChoice;

            fn from_str(s: &str) -> ::std::result::Result<Self, Self::Err> {
                match s {
                    $( $text $(| $alias)* => Ok(Self::$variant), )+
                    other => Err($crate::UnknownChoice {
                        setting: $setting,
                        got: other.to_string(),
                        expected: Self::NAMES,
                    }),
                }
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.name())
            }
        }

        impl $crate::__serde::Serialize for $name {
            fn serialize<S: $crate::__serde::Serializer>(&self, serializer: S) -> ::std::result::Result<S::Ok, S::Error> {
                serializer.serialize_str(self.name())
            }
        }

        impl<'de> $crate::__serde::Deserialize<'de> for $name {
            fn deserialize<D: $crate::__serde::Deserializer<'de>>(deserializer: D) -> ::std::result::Result<Self, D::Error> {
                let text = <::std::string::String as $crate::__serde::Deserialize>::deserialize(deserializer)?;
                text.parse().map_err(<D::Error as $crate::__serde::de::Error>::custom)
            }
        }
    };
}
