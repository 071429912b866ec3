//! Users named from their uids (the host's passwd, through NSS), and the
//! `--user` arguments turned into uids.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, OnceLock},
};

/// Names kept before the cache starts over (a host has few users; a
/// container's uids may be many numbers without names).
const MAX_USER_NAMES: usize = 10_000;

type NameCache = Mutex<HashMap<u32, Option<Arc<str>>>>;

fn cache() -> &'static NameCache {
    static CACHE: OnceLock<NameCache> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

/// The name of user `uid` in the host's passwd (None: no such user, as a
/// container's users mostly are, or an unset id). Looked up once per uid.
pub fn user_name(uid: u32) -> Option<Arc<str>> {
    if uid == probe_common::UNSET_ID {
        return None;
    }
    let mut names = cache()
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(name) = names.get(&uid) {
        return name.clone();
    }
    if names.len() >= MAX_USER_NAMES {
        names.clear();
    }
    let name =
        uzers::get_user_by_uid(uid).map(|user| Arc::from(user.name().to_string_lossy().as_ref()));
    names.insert(uid, name.clone());
    name
}

/// A `--user` argument: a user name, or a uid (a number, as `ps -u`
/// takes; a name that is all digits is taken as a uid).
pub fn parse_user(arg: &str) -> Result<u32, String> {
    if let Ok(uid) = arg.parse::<u32>() {
        if uid == probe_common::UNSET_ID {
            return Err(format!("{uid} is not a uid"));
        }
        return Ok(uid);
    }
    match uzers::get_user_by_name(arg) {
        Some(user) => Ok(user.uid()),
        None => Err(format!("no user named '{arg}'")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_named_and_found_by_name_and_number() {
        assert_eq!(user_name(0).as_deref(), Some("root"));
        assert_eq!(parse_user("root"), Ok(0));
        assert_eq!(parse_user("0"), Ok(0));
        assert_eq!(parse_user("4242"), Ok(4242), "a uid needs no passwd entry");
    }

    #[test]
    fn unknown_users_and_unset_ids_are_refused_or_unnamed() {
        assert!(parse_user("no-such-user-mmapwatch").is_err());
        assert!(parse_user("4294967295").is_err());
        assert_eq!(user_name(probe_common::UNSET_ID), None);
    }
}
