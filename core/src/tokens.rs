//! API tokens: the `[[tokens]]` entries of `server.conf`. A token is kept
//! only as the SHA-256 hash of its text, with a name (for logs and error
//! messages) and the scopes it grants. No tokens means the API is open; the
//! API checks a presented token against these (`api/src/auth.rs`).

use std::fmt;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::config::ConfigError;

/// How a hash is written in `server.conf`: this prefix, then 64 hex digits.
pub const HASH_PREFIX: &str = "sha256:";

/// The longest token name, in bytes.
pub const MAX_NAME_BYTES: usize = 64;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// `POST /receive`.
    Submit,
    /// Reading tasks: `GET /status/…`, `GET /tasks…`.
    Read,
    /// Steering tasks (`POST /tasks/<id>/cancel`, `/retry`); implies every
    /// other scope.
    Admin,
}

impl Scope {
    /// Every scope, as `server.conf` lists them.
    pub const ALL: [Self; 3] = [Self::Submit, Self::Read, Self::Admin];

    /// The scope as written in `server.conf`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Submit => "submit",
            Self::Read => "read",
            Self::Admin => "admin",
        }
    }

    /// The scope written `name`, if there is one.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == name)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One configured token.
#[derive(Clone)]
pub struct Token {
    /// Who holds it, for logs and messages; never secret.
    pub name: String,
    /// SHA-256 of the token's text.
    pub hash: [u8; 32],
    /// What it may do.
    pub scopes: Vec<Scope>,
}

impl Token {
    /// Whether the token grants `scope` (`admin` grants every scope).
    pub fn allows(&self, scope: Scope) -> bool {
        self.scopes.contains(&Scope::Admin) || self.scopes.contains(&scope)
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("name", &self.name)
            .field("hash", &format_hash(&self.hash))
            .field("scopes", &self.scopes)
            .finish()
    }
}

/// The configured tokens; empty means no authentication.
#[derive(Debug, Clone, Default)]
pub struct Tokens(Vec<Token>);

impl Tokens {
    /// The tokens; two with the same name or the same hash are an error.
    pub fn new(tokens: Vec<Token>) -> Result<Self, ConfigError> {
        Self::checked(tokens, "tokens")
    }

    /// [`Tokens::new`], errors naming `key[i]`.
    fn checked(tokens: Vec<Token>, key: &str) -> Result<Self, ConfigError> {
        for (i, token) in tokens.iter().enumerate() {
            if let Some(earlier) = tokens[..i].iter().position(|t| t.name == token.name) {
                return Err(ConfigError::new(
                    format!("{key}[{i}].name"),
                    format!("{:?} is already the name of {key}[{earlier}]", token.name),
                ));
            }
            if let Some(earlier) = tokens[..i].iter().position(|t| t.hash == token.hash) {
                return Err(ConfigError::new(
                    format!("{key}[{i}].hash"),
                    format!("is already the hash of {key}[{earlier}]; make a new token"),
                ));
            }
        }
        Ok(Self(tokens))
    }

    /// Whether no token is configured (the API is then open).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Every token, in the order of `server.conf`.
    pub fn iter(&self) -> impl Iterator<Item = &Token> {
        self.0.iter()
    }

    /// Checks the entries as written; errors name `key[i]` (`tokens` in
    /// the file, `FERRY_TOKENS` in the environment).
    pub(crate) fn from_raw(tokens: Vec<RawToken>, key: &str) -> Result<Self, ConfigError> {
        let tokens = tokens
            .into_iter()
            .enumerate()
            .map(|(i, t)| t.into_token(key, i))
            .collect::<Result<Vec<_>, _>>()?;
        Self::checked(tokens, key)
    }
}

/// `FERRY_TOKENS` (named `key`): the entries as a TOML array of inline
/// tables, `[{name = "a", hash = "sha256:…", scopes = ["read"]}, …]`.
pub(crate) fn raw_from_env(key: &str, value: &str) -> Result<Vec<RawToken>, ConfigError> {
    #[derive(Deserialize)]
    struct Wrapper {
        tokens: Vec<RawToken>,
    }
    toml::from_str::<Wrapper>(&format!("tokens = {value}"))
        .map(|w| w.tokens)
        .map_err(|e| {
            ConfigError::new(
                key,
                format!(
                    "must be a TOML array of {{name = \"…\", hash = \"sha256:…\", scopes = [\"…\"]}}: {}",
                    e.message()
                ),
            )
        })
}

/// SHA-256 of a token's text.
pub fn hash_token(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// A hash as `server.conf` writes it: `sha256:` and 64 lower-case hex digits.
pub fn format_hash(hash: &[u8; 32]) -> String {
    let mut text = String::with_capacity(HASH_PREFIX.len() + 64);
    text.push_str(HASH_PREFIX);
    for byte in hash {
        text.push_str(&format!("{byte:02x}"));
    }
    text
}

/// A hash as `server.conf` writes it, read back (hex digits in either case).
pub fn parse_hash(text: &str) -> Result<[u8; 32], String> {
    let hex = text.strip_prefix(HASH_PREFIX).ok_or_else(|| {
        format!("{text:?} must be {HASH_PREFIX}<64 hex digits>, the SHA-256 of the token (ferry-api hash-token prints it)")
    })?;
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!(
            "{text:?}: after {HASH_PREFIX} must come 64 hex digits (a SHA-256), not {} characters",
            hex.len()
        ));
    }
    let mut hash = [0u8; 32];
    for (i, byte) in hash.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("checked hex digits");
    }
    Ok(hash)
}

/// Whether `c` may appear in a bearer token (RFC 6750's `b64token`, less
/// the trailing `=` padding, which is allowed only at the end).
pub fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '~' | '+' | '/')
}

/// Whether `token` is a bearer token a client can send: RFC 6750's
/// `b64token`, `1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`.
pub fn is_b64token(token: &str) -> bool {
    let body = token.trim_end_matches('=');
    !body.is_empty() && body.chars().all(is_token_char)
}

/// The `[[tokens]]` entry that holds `hash`, to paste into `server.conf`.
pub fn config_entry(name: &str, hash: &[u8; 32], scopes: &[Scope]) -> String {
    let scopes: Vec<String> = scopes.iter().map(|s| format!("{:?}", s.as_str())).collect();
    format!(
        "[[tokens]]\nname = {name:?}\nhash = {:?}\nscopes = [{}]\n",
        format_hash(hash),
        scopes.join(", ")
    )
}

/// Whether `name` may name a token: 1 to [`MAX_NAME_BYTES`] ASCII letters,
/// digits, `-`, `_` or `.`.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_BYTES
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// A `[[tokens]]` entry as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawToken {
    name: String,
    hash: String,
    scopes: Vec<String>,
}

impl RawToken {
    fn into_token(self, base: &str, i: usize) -> Result<Token, ConfigError> {
        let key = |field: &str| format!("{base}[{i}].{field}");
        if !is_valid_name(&self.name) {
            return Err(ConfigError::new(
                key("name"),
                format!(
                    "{:?} must be 1 to {MAX_NAME_BYTES} letters, digits, '-', '_' or '.'",
                    self.name
                ),
            ));
        }
        let hash = parse_hash(&self.hash).map_err(|e| ConfigError::new(key("hash"), e))?;
        if self.scopes.is_empty() {
            return Err(ConfigError::new(
                key("scopes"),
                "must list at least one of \"submit\", \"read\", \"admin\"",
            ));
        }
        let mut scopes = Vec::with_capacity(self.scopes.len());
        for (j, name) in self.scopes.iter().enumerate() {
            let scope = Scope::parse(name).ok_or_else(|| {
                ConfigError::new(
                    format!("{base}[{i}].scopes[{j}]"),
                    format!("unknown scope {name:?} (submit, read, admin)"),
                )
            })?;
            if !scopes.contains(&scope) {
                scopes.push(scope);
            }
        }
        Ok(Token {
            name: self.name,
            hash,
            scopes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Config;

    /// SHA-256 of "secret", from `printf secret | sha256sum`.
    const SECRET_HASH: &str =
        "sha256:2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b";

    fn entry(name: &str, hash: &str, scopes: &str) -> String {
        format!("[[tokens]]\nname = {name:?}\nhash = {hash:?}\nscopes = {scopes}\n")
    }

    #[test]
    fn a_token_is_its_sha256() {
        assert_eq!(format_hash(&hash_token("secret")), SECRET_HASH);
        assert_eq!(
            parse_hash(&SECRET_HASH.to_uppercase().replace("SHA256:", "sha256:")).unwrap(),
            hash_token("secret")
        );
    }

    #[test]
    fn tokens_load_with_their_scopes() {
        let text = entry("producer", SECRET_HASH, "[\"submit\"]")
            + &entry(
                "ops",
                &format_hash(&hash_token("other")),
                "[\"admin\", \"admin\"]",
            );
        let config = Config::from_toml(&text).unwrap();
        let tokens: Vec<&Token> = config.tokens.iter().collect();
        assert_eq!(tokens.len(), 2);
        assert_eq!(tokens[0].name, "producer");
        assert_eq!(tokens[0].hash, hash_token("secret"));
        assert!(tokens[0].allows(Scope::Submit));
        assert!(!tokens[0].allows(Scope::Read));
        assert!(!tokens[0].allows(Scope::Admin));
        assert_eq!(tokens[1].scopes, vec![Scope::Admin]);
        assert!(Scope::ALL.iter().all(|s| tokens[1].allows(*s)));
        assert!(Config::from_toml("").unwrap().tokens.is_empty());
    }

    #[test]
    fn the_printed_entry_loads() {
        let text = config_entry("ci-bot", &hash_token("tok"), &[Scope::Read, Scope::Submit]);
        let config = Config::from_toml(&text).unwrap();
        let token = config.tokens.iter().next().unwrap();
        assert_eq!(token.name, "ci-bot");
        assert_eq!(token.hash, hash_token("tok"));
        assert_eq!(token.scopes, vec![Scope::Read, Scope::Submit]);
    }

    #[test]
    fn bad_entries_name_their_key() {
        let other = format_hash(&hash_token("other"));
        let cases = [
            (entry("a", "2bb80d537b", "[\"read\"]"), "tokens[0].hash"),
            (entry("a", "sha256:xyz", "[\"read\"]"), "tokens[0].hash"),
            (entry("a", "md5:00", "[\"read\"]"), "tokens[0].hash"),
            (
                entry("a", &SECRET_HASH[..70], "[\"read\"]"),
                "tokens[0].hash",
            ),
            (
                entry("a", SECRET_HASH, "[\"write\"]"),
                "tokens[0].scopes[0]",
            ),
            (
                entry("a", SECRET_HASH, "[\"read\", \"Read\"]"),
                "tokens[0].scopes[1]",
            ),
            (entry("a", SECRET_HASH, "[]"), "tokens[0].scopes"),
            (entry("", SECRET_HASH, "[\"read\"]"), "tokens[0].name"),
            (entry("a b", SECRET_HASH, "[\"read\"]"), "tokens[0].name"),
            (
                entry("a", SECRET_HASH, "[\"read\"]") + &entry("a", &other, "[\"read\"]"),
                "tokens[1].name",
            ),
            (
                entry("a", SECRET_HASH, "[\"read\"]") + &entry("b", SECRET_HASH, "[\"read\"]"),
                "tokens[1].hash",
            ),
            (
                "[[tokens]]\nname = \"a\"\nscopes = [\"read\"]".to_string(),
                "tokens[0].hash",
            ),
            (
                entry("a", SECRET_HASH, "[\"read\"]") + "token = \"x\"\n",
                "tokens[0].token",
            ),
        ];
        for (text, key) in cases {
            let err = Config::from_toml(&text).unwrap_err();
            assert_eq!(err.key, key, "{text}: {err}");
        }
    }

    #[test]
    fn ferry_tokens_replaces_the_file_entries() {
        let load = |file: &str, value: &str| {
            let value = value.to_string();
            Config::from_layers(
                file,
                |k| (k == "FERRY_TOKENS").then(|| value.clone()),
                crate::config::Layer::default(),
            )
        };
        let file = entry("file", SECRET_HASH, "[\"read\"]");
        let env = format!(
            "[{{name = \"env\", hash = {:?}, scopes = [\"submit\", \"read\"]}}]",
            format_hash(&hash_token("other"))
        );
        let config = load(&file, &env).unwrap();
        let names: Vec<&str> = config.tokens.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["env"]);
        assert!(
            load(&file, "[]").unwrap().tokens.is_empty(),
            "[] turns auth off"
        );
        assert_eq!(load("", "nope").unwrap_err().key, "FERRY_TOKENS");
        let bad = "[{name = \"a\", hash = \"sha256:00\", scopes = [\"read\"]}]";
        assert_eq!(load("", bad).unwrap_err().key, "FERRY_TOKENS[0].hash");
    }

    #[test]
    fn bearer_token_syntax() {
        for good in ["abc", "a-b.c_d~e+f/g", "YWJj==", "0123456789abcdef"] {
            assert!(is_b64token(good), "{good}");
        }
        for bad in ["", "=", "a b", "a=b", "tok\u{e9}n", "a,b", "\"a\""] {
            assert!(!is_b64token(bad), "{bad}");
        }
    }
}
