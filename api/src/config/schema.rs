//! The configuration's schema: which sections and keys exist, what type each key has, and what
//! it means. Sections are declared once with [`section!`], which emits the serde struct, its
//! `Default` and its [`Key`] table, so the struct, the environment overlay, `check-config` and
//! `CONFIG.md` cannot drift apart.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;

/// The type of a key's value, as far as parsing an environment variable is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `true`/`false` (an environment variable may also say `1`/`0`).
    Bool,
    /// A non-negative integer.
    Integer,
    /// A floating-point number.
    Float,
    /// Free text (addresses, paths and URLs are strings too; their syntax is checked later).
    String,
    /// One of a closed set of lowercase words.
    Enum(&'static [&'static str]),
}

/// One key of one section.
#[derive(Debug, Clone, Copy)]
pub struct Key {
    /// The key's name in the file (`allow_private_destinations`).
    pub name: &'static str,
    /// Its doc comment, as written (one line per `///` line).
    pub doc: &'static str,
    /// How its value is written.
    pub kind: Kind,
    /// `true` when the key may be unset (an `Option` field).
    pub optional: bool,
}

impl Key {
    /// The doc comment as one line of prose.
    pub fn meaning(&self) -> String {
        let mut out = String::new();
        for line in self.doc.lines().map(str::trim).filter(|l| !l.is_empty()) {
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(line);
        }
        out
    }
}

/// A `[section]` of the configuration file.
pub trait Section {
    /// The section's name in the file (`delivery`).
    const NAME: &'static str;
    /// Its keys, in declaration order.
    const KEYS: &'static [Key];
}

/// Maps a field's Rust type to its [`Kind`].
pub trait Typed {
    const KIND: Kind;
    const OPTIONAL: bool = false;
}

macro_rules! typed {
    ($kind:expr => $($ty:ty),*) => {
        $(impl Typed for $ty { const KIND: Kind = $kind; })*
    };
}
typed!(Kind::Bool => bool);
typed!(Kind::Integer => u16, u32, u64, usize);
typed!(Kind::Float => f64);
typed!(Kind::String => String, PathBuf, SocketAddr);

impl<T: Typed> Typed for Option<T> {
    const KIND: Kind = T::KIND;
    const OPTIONAL: bool = true;
}

/// Declares a configuration section: a struct whose every field is a key with a doc comment and
/// a default (`name: Type = default_expr,`).
macro_rules! section {
    (
        $(#[doc = $sdoc:literal])*
        pub struct $name:ident in $toml:literal {
            $(
                $(#[doc = $doc:literal])*
                $field:ident : $ty:ty = $default:expr,
            )*
        }
    ) => {
        $(#[doc = $sdoc])*
        #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
        #[serde(deny_unknown_fields, default)]
        pub struct $name {
            $( $(#[doc = $doc])* pub $field: $ty, )*
        }

        impl Default for $name {
            fn default() -> Self {
                Self { $( $field: $default, )* }
            }
        }

        impl $crate::config::schema::Section for $name {
            const NAME: &'static str = $toml;
            const KEYS: &'static [$crate::config::schema::Key] = &[
                $(
                    $crate::config::schema::Key {
                        name: stringify!($field),
                        doc: concat!($($doc, "\n",)*),
                        kind: <$ty as $crate::config::schema::Typed>::KIND,
                        optional: <$ty as $crate::config::schema::Typed>::OPTIONAL,
                    },
                )*
            ];
        }
    };
}
pub(crate) use section;

/// Declares a closed set of lowercase words as an enum (`Name { Variant = "word", ... }`).
macro_rules! word_enum {
    (
        $(#[doc = $doc:literal])*
        pub enum $name:ident {
            $( $(#[doc = $vdoc:literal])* $variant:ident = $word:literal, )*
        }
    ) => {
        $(#[doc = $doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
        pub enum $name {
            $( $(#[doc = $vdoc])* #[serde(rename = $word)] $variant, )*
        }

        impl $name {
            /// The word as written in the configuration.
            pub fn as_str(self) -> &'static str {
                match self {
                    $( $name::$variant => $word, )*
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl $crate::config::schema::Typed for $name {
            const KIND: $crate::config::schema::Kind =
                $crate::config::schema::Kind::Enum(&[$($word),*]);
        }
    };
}
pub(crate) use word_enum;

/// `HOOKRELAY_<SECTION>_<KEY>` for a key.
pub fn env_var(section: &str, key: &str) -> String {
    format!(
        "HOOKRELAY_{}_{}",
        section.to_ascii_uppercase(),
        key.to_ascii_uppercase()
    )
}

/// Finds a key's schema.
pub fn find_key(section: &str, key: &str) -> Option<&'static Key> {
    super::SECTIONS
        .iter()
        .find(|(name, _)| *name == section)
        .and_then(|(_, keys)| keys.iter().find(|k| k.name == key))
}

/// Whether `section` names a section.
pub fn is_section(section: &str) -> bool {
    super::SECTIONS.iter().any(|(name, _)| *name == section)
}

/// The configuration reference as a markdown table: key, environment variable, default, meaning.
/// `CONFIG.md` is this output (a test keeps it current).
pub fn markdown_reference() -> String {
    let defaults = super::Config::default().to_table();
    let mut out = String::from(
        "# HookRelay configuration\n\n\
         <!-- Generated from api/src/config/sections.rs by \
         `UPDATE_CONFIG_MD=1 cargo test -p hookrelay-api --lib config_md`; do not edit. -->\n\n\
         Every key can be set in the TOML file given with `--config FILE` (as `key = value` under \
         `[section]`), overridden by the environment variable `HOOKRELAY_<SECTION>_<KEY>`, and, for \
         `server.listen`, `server.data_dir` and `server.shards`, by the flags `--listen`, \
         `--data-dir` and `--shards`. Precedence: flag > environment > file > default. Unknown \
         keys in the file, and unknown `HOOKRELAY_<SECTION>_<KEY>` variables of a known section, \
         stop start-up (exit code 2). An empty environment variable unsets an optional key. \
         `hookrelay check-config` prints the effective configuration.\n\n\
         `HOOKRELAY_ROOT_KEY` (not a config key) sets the operator key on first start.\n",
    );
    for (section, keys) in super::SECTIONS {
        let _ = write!(
            out,
            "\n## `[{section}]`\n\n| Key | Environment variable | Default | Meaning |\n|---|---|---|---|\n"
        );
        for key in *keys {
            let default = defaults
                .get(*section)
                .and_then(|t| t.get(key.name))
                .map_or_else(|| "unset".to_string(), |v| format!("`{v}`"));
            let mut meaning = key.meaning();
            if let Some(range) = super::validate::range_of(&format!("{section}.{}", key.name)) {
                let _ = write!(meaning, " Range: `{}..={}`.", range.start(), range.end());
            }
            if let Kind::Enum(words) = key.kind {
                let words: Vec<String> = words.iter().map(|w| format!("`\"{w}\"`")).collect();
                let _ = write!(meaning, " One of {}.", words.join(", "));
            }
            let _ = writeln!(
                out,
                "| `{section}.{}` | `{}` | {default} | {} |",
                key.name,
                env_var(section, key.name),
                meaning.replace('|', "\\|"),
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, SECTIONS};

    #[test]
    fn the_schema_matches_the_structs() {
        // Every non-optional key appears in the serialized defaults and vice versa, and every
        // section of the struct is listed.
        let table = Config::default().to_table();
        let names: Vec<&str> = SECTIONS.iter().map(|(s, _)| *s).collect();
        let mut serialized: Vec<&str> = table.keys().map(String::as_str).collect();
        serialized.sort_unstable();
        let mut listed = names.clone();
        listed.sort_unstable();
        assert_eq!(serialized, listed);
        for (section, keys) in SECTIONS {
            let values = table[*section].as_table().unwrap();
            for key in *keys {
                assert_eq!(
                    values.contains_key(key.name),
                    !key.optional,
                    "{section}.{}",
                    key.name
                );
                assert!(
                    !key.meaning().is_empty(),
                    "{section}.{} has no doc comment",
                    key.name
                );
                assert!(find_key(section, key.name).is_some());
            }
            assert_eq!(
                values.len(),
                keys.iter().filter(|k| !k.optional).count(),
                "{section}"
            );
        }
    }

    #[test]
    fn enum_words_round_trip() {
        use crate::config::LogIo;
        assert_eq!(LogIo::Portable.as_str(), "portable");
        assert_eq!(
            <LogIo as Typed>::KIND,
            Kind::Enum(&["auto", "uring", "portable"])
        );
        let v: LogIo = toml::Value::String("uring".into()).try_into().unwrap();
        assert_eq!(v, LogIo::Uring);
    }

    #[test]
    fn env_var_names() {
        assert_eq!(
            env_var("delivery", "allow_private_destinations"),
            "HOOKRELAY_DELIVERY_ALLOW_PRIVATE_DESTINATIONS"
        );
        assert_eq!(env_var("log", "io"), "HOOKRELAY_LOG_IO");
    }

    /// `api/CONFIG.md` is the generated reference; regenerate with `UPDATE_CONFIG_MD=1`.
    #[test]
    fn config_md_is_current() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("CONFIG.md");
        let expected = markdown_reference();
        if std::env::var_os("UPDATE_CONFIG_MD").is_some() {
            std::fs::write(&path, &expected).unwrap();
        }
        let actual = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            actual == expected,
            "{} is stale: run UPDATE_CONFIG_MD=1 cargo test -p hookrelay-api --lib config_md",
            path.display()
        );
    }
}
