//! HTTP basic auth against bcrypt hashes (`basic_auth_users` of the web
//! config), as the exporter toolkit checks it: a user that does not exist
//! costs one bcrypt too, so timing does not tell user names apart, and a
//! pair that passed is remembered, so a scrape every few seconds does not
//! pay ~50-100 ms of bcrypt each time.

use std::{
    collections::{BTreeMap, HashSet},
    sync::Mutex,
};

use base64::Engine as _;

/// Verified (user, password) pairs kept; the set starts over past this.
const REMEMBERED: usize = 256;

pub struct BasicAuth {
    users: BTreeMap<String, String>,
    /// What an unknown user is verified against: a hash of the users'
    /// highest cost, so that it takes as long (its password does not
    /// matter: an unknown user never passes).
    unknown_user_hash: String,
    verified: Mutex<HashSet<(String, String)>>,
}

impl BasicAuth {
    /// Users and their bcrypt hashes; refuses anything that is not one.
    pub fn new(users: BTreeMap<String, String>) -> Result<Self, String> {
        let mut cost = 4; // bcrypt's lowest
        for (user, hash) in &users {
            let parts = hash.parse::<bcrypt::HashParts>().map_err(|_| {
                format!("basic_auth_users.{user}: not a bcrypt hash (make one with `htpasswd -nBC 10 \"\" | tr -d ':\\n'`)")
            })?;
            cost = cost.max(parts.get_cost());
        }
        let unknown_user_hash =
            bcrypt::hash("no such user", cost).map_err(|err| err.to_string())?;
        Ok(Self {
            users,
            unknown_user_hash,
            verified: Mutex::default(),
        })
    }

    /// Whether an `Authorization` header value names a user with the right
    /// password. Blocks for one bcrypt unless the pair passed before.
    pub fn allows(&self, authorization: Option<&[u8]>) -> bool {
        let Some((user, password)) = authorization.and_then(credentials) else {
            return false;
        };
        let pair = (user, password);
        let mut verified = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        if verified.contains(&pair) {
            return true;
        }
        drop(verified);
        // An unknown user is checked against a hash that matches nothing.
        let hash = self
            .users
            .get(&pair.0)
            .map_or(self.unknown_user_hash.as_str(), String::as_str);
        let ok = bcrypt::verify(&pair.1, hash).unwrap_or(false) && self.users.contains_key(&pair.0);
        if ok {
            verified = self.verified.lock().unwrap_or_else(|e| e.into_inner());
            if verified.len() >= REMEMBERED {
                verified.clear();
            }
            verified.insert(pair);
        }
        ok
    }
}

/// `Basic BASE64(user:password)`.
fn credentials(header: &[u8]) -> Option<(String, String)> {
    let header = std::str::from_utf8(header).ok()?;
    let (scheme, encoded) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(user: &str, password: &str) -> Vec<u8> {
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        format!("Basic {encoded}").into_bytes()
    }

    #[test]
    fn only_the_right_password_of_a_known_user_passes() {
        // Cost 4 keeps the test fast; the check is the same.
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        let auth = BasicAuth::new([("prom".to_string(), hash)].into()).unwrap();
        assert!(auth.allows(Some(&header("prom", "s3cret"))));
        // Remembered, and still right.
        assert!(auth.allows(Some(&header("prom", "s3cret"))));
        assert!(!auth.allows(Some(&header("prom", "wrong"))));
        assert!(!auth.allows(Some(&header("eve", "s3cret"))));
        assert!(!auth.allows(None));
        assert!(!auth.allows(Some(b"Bearer abc")));
        assert!(!auth.allows(Some(b"Basic !!!")));
    }

    #[test]
    fn an_unknown_user_costs_a_bcrypt_like_a_known_one() {
        let hash = bcrypt::hash("x", 5).unwrap();
        let auth = BasicAuth::new([("prom".to_string(), hash)].into()).unwrap();
        let unknown = auth.unknown_user_hash.parse::<bcrypt::HashParts>().unwrap();
        assert_eq!(unknown.get_cost(), 5);
    }
}
