//! Backoffice users (DESIGN.md §13): roles and what each may do, account
//! states, password and token rules, the session cookie, and the
//! failed-login limits.

use chrono::{DateTime, Duration, Utc};

use super::{keys::KeyHasher, tenant::violation};
use crate::error::FieldViolation;

/// A user's role. Platform roles have no tenant; tenant roles have one
/// and are ordered viewer < developer < owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Viewer,
    Developer,
    Owner,
    Admin,
    SuperAdmin,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::SuperAdmin,
        Role::Admin,
        Role::Owner,
        Role::Developer,
        Role::Viewer,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::SuperAdmin => "super_admin",
            Self::Admin => "admin",
            Self::Owner => "owner",
            Self::Developer => "developer",
            Self::Viewer => "viewer",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// A platform user (no tenant).
    pub fn is_platform(self) -> bool {
        matches!(self, Self::Admin | Self::SuperAdmin)
    }
}

/// What a method asks of a session (`(tenlyr.v1.session)` on the RPC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionRule {
    /// Keys only.
    None,
    /// At least this tenant role (platform users always pass).
    AtLeast(Role),
    /// Platform super admins only.
    SuperAdmin,
}

impl SessionRule {
    /// Whether a user with `role` may call a method with this rule (the
    /// kind of key the method accepts is checked separately).
    pub fn admits(self, role: Role) -> bool {
        match self {
            Self::None => false,
            Self::SuperAdmin => role == Role::SuperAdmin,
            Self::AtLeast(least) => role.is_platform() || role >= least,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserStatus {
    /// Created; no password until the invite is accepted.
    Invited,
    Active,
    /// Cannot sign in; its sessions ended.
    Deactivated,
}

impl UserStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Invited => "invited",
            Self::Active => "active",
            Self::Deactivated => "deactivated",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "invited" => Self::Invited,
            "active" => Self::Active,
            "deactivated" => Self::Deactivated,
            _ => return None,
        })
    }
}

/// A user's email: a valid address, stored lowercase.
pub fn email(raw: &str) -> Result<String, FieldViolation> {
    super::tenant::email(raw)
        .map(|e| e.to_lowercase())
        .map_err(|_| violation("email", "must be a valid email address"))
}

pub const MIN_PASSWORD: usize = 12;
pub const MAX_PASSWORD: usize = 200;

/// A new password: 12 to 200 characters (NIST SP 800-63B: length, no
/// composition rules). bcrypt reads at most 72 bytes, so every password is
/// pre-hashed by [`bcrypt_input`].
pub fn password(raw: &str) -> Result<&str, FieldViolation> {
    let n = raw.chars().count();
    if !(MIN_PASSWORD..=MAX_PASSWORD).contains(&n) {
        return Err(violation("password", "must be 12 to 200 characters"));
    }
    if raw.chars().any(char::is_control) {
        return Err(violation("password", "must not contain control characters"));
    }
    Ok(raw)
}

/// What bcrypt hashes: the password's HMAC under the server pepper, in
/// base64 (44 bytes), so every character of a long password counts, no
/// input is cut at bcrypt's 72 bytes, no string but the password itself
/// verifies, and a stolen table of hashes is useless without the pepper.
pub fn bcrypt_input(hasher: &KeyHasher, password: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(hasher.digest(&format!("password:{password}")))
}

/// The cost a bcrypt hash (`$2b$12$…`) was made with.
pub fn bcrypt_cost(hash: &str) -> Option<u32> {
    hash.split('$').nth(2)?.parse().ok()
}

/// A random one-time token (session, invite, reset): 32 bytes, URL-safe
/// base64 without padding (43 characters).
pub fn new_token() -> String {
    use base64::Engine as _;
    use ring::rand::SecureRandom as _;
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .expect("the system random source works");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Whether `raw` has the shape of a token [`new_token`] makes (checked
/// before any lookup, so junk never reaches the database).
pub fn token_shape(raw: &str) -> bool {
    raw.len() == 43
        && raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The session cookie's name.
pub const COOKIE: &str = "tenlyr_session";

/// The session token in a `Cookie` header, if any.
pub fn session_from_cookie(header: &str) -> Option<&str> {
    header
        .split(';')
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim_matches('"'))
        .filter(|v| token_shape(v))
}

/// `Set-Cookie` for a new session: HttpOnly, SameSite=Strict, Path=/,
/// `Secure` when the server is reached over https, and a Max-Age of the
/// absolute lifetime.
pub fn set_cookie(token: &str, max_age: Duration, secure: bool) -> String {
    format!(
        "{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
        max_age.num_seconds().max(0),
        if secure { "; Secure" } else { "" }
    )
}

/// `Set-Cookie` that removes the session cookie.
pub fn clear_cookie(secure: bool) -> String {
    set_cookie("", Duration::zero(), secure)
}

/// How long sessions and links live.
#[derive(Debug, Clone, Copy)]
pub struct Lifetimes {
    /// A session ends after this long without a request.
    pub idle: Duration,
    /// A session ends this long after sign-in, however busy.
    pub absolute: Duration,
    pub invite: Duration,
    pub reset: Duration,
}

impl Default for Lifetimes {
    fn default() -> Self {
        Self {
            idle: Duration::minutes(30),
            absolute: Duration::hours(12),
            invite: Duration::hours(72),
            reset: Duration::hours(1),
        }
    }
}

impl Lifetimes {
    /// Whether a session last seen at `seen` and ending at `expires` at the
    /// latest is still alive at `now`.
    pub fn alive(&self, seen: DateTime<Utc>, expires: DateTime<Utc>, now: DateTime<Utc>) -> bool {
        now < expires && now < seen + self.idle
    }
}

/// Failed sign-ins allowed per subject within [`LOGIN_WINDOW`] before it is
/// refused for [`LOGIN_LOCKOUT`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginLimit {
    pub per_account: i32,
    pub per_address: i32,
}

impl Default for LoginLimit {
    fn default() -> Self {
        Self {
            per_account: 5,
            per_address: 20,
        }
    }
}

pub const LOGIN_WINDOW: Duration = Duration::minutes(15);
pub const LOGIN_LOCKOUT: Duration = Duration::minutes(15);

/// The counter subject of an account (whether or not it exists, so a
/// lockout says nothing about existence): a digest of the email as typed
/// (trimmed, lowercase), so any input has a short key.
pub fn account_subject(email: &str) -> String {
    let digest = ring::digest::digest(
        &ring::digest::SHA256,
        email.trim().to_lowercase().as_bytes(),
    );
    format!("email:{}", super::keys::hex(&digest.as_ref()[..16]))
}

/// The counter subject of a client address: IPv4 addresses one by one,
/// IPv6 by /64 (one host usually holds a whole /64).
pub fn address_subject(address: std::net::IpAddr) -> String {
    match address {
        std::net::IpAddr::V4(v4) => format!("ip:{v4}"),
        std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => format!("ip:{v4}"),
            None => {
                let s = v6.segments();
                format!("ip:{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_round_trip_and_order() {
        for role in Role::ALL {
            assert_eq!(Role::parse(role.as_str()), Some(role));
        }
        assert!(Role::Viewer < Role::Developer && Role::Developer < Role::Owner);
        assert!(Role::Admin.is_platform() && !Role::Owner.is_platform());
        assert_eq!(Role::parse("root"), None);
    }

    #[test]
    fn session_rules() {
        let developer = SessionRule::AtLeast(Role::Developer);
        assert!(!developer.admits(Role::Viewer));
        assert!(developer.admits(Role::Developer));
        assert!(developer.admits(Role::Owner));
        assert!(developer.admits(Role::Admin));
        assert!(!SessionRule::None.admits(Role::SuperAdmin));
        assert!(!SessionRule::SuperAdmin.admits(Role::Admin));
        assert!(SessionRule::SuperAdmin.admits(Role::SuperAdmin));
    }

    #[test]
    fn passwords() {
        assert!(password("short").is_err());
        assert!(password("twelve chars").is_ok());
        assert!(password("twelve\0chars").is_err());
        assert!(password(&"x".repeat(201)).is_err());
        let hasher = KeyHasher::new(b"a test pepper of some length");
        let long = "é".repeat(100);
        assert_eq!(bcrypt_input(&hasher, &long).len(), 44);
        assert_ne!(
            bcrypt_input(&hasher, &long),
            bcrypt_input(&hasher, &"é".repeat(99)),
            "every character counts"
        );
        assert_ne!(bcrypt_input(&hasher, "twelve chars"), "twelve chars");
        assert_eq!(bcrypt_cost("$2b$12$abcdefghijklmnopqrstuv"), Some(12));
        assert_eq!(bcrypt_cost("junk"), None);
    }

    #[test]
    fn tokens_and_cookies() {
        let token = new_token();
        assert!(token_shape(&token));
        assert!(!token_shape("abc"));
        assert!(!token_shape(&format!("{}!", &token[..42])));
        let header = format!("a=b; {COOKIE}={token}; c=d");
        assert_eq!(session_from_cookie(&header), Some(token.as_str()));
        assert_eq!(session_from_cookie("tenlyr_session=junk"), None);
        let cookie = set_cookie(&token, Duration::hours(12), true);
        assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"));
        assert!(cookie.ends_with("Max-Age=43200; Secure"));
        assert!(clear_cookie(false).contains("Max-Age=0"));
    }

    #[test]
    fn session_expiry() {
        let life = Lifetimes::default();
        let t0 = Utc::now();
        let expires = t0 + life.absolute;
        assert!(life.alive(t0, expires, t0 + Duration::minutes(29)));
        assert!(!life.alive(t0, expires, t0 + Duration::minutes(31)));
        let busy = t0 + Duration::hours(12) - Duration::minutes(1);
        assert!(life.alive(busy, expires, busy + Duration::seconds(30)));
        assert!(!life.alive(busy, expires, expires));
    }

    #[test]
    fn counter_subjects() {
        assert_eq!(
            account_subject(" Ops@Example.com"),
            account_subject("ops@example.com")
        );
        assert_eq!(account_subject(&"x".repeat(100_000)).len(), 38);
        let a: std::net::IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: std::net::IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        assert_eq!(address_subject(a), address_subject(b));
        let v4: std::net::IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(address_subject(v4), "ip:10.0.0.1");
    }

    #[test]
    fn emails_are_lowercased() {
        assert_eq!(email(" Ops@Example.COM ").unwrap(), "ops@example.com");
        assert_eq!(email("nope").unwrap_err().field, "email");
    }
}
