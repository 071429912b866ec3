//! Which `comm` and `cgroup` values get a label of their own: admitted by
//! activity, not arrival. A value holds its slot while it is active; once
//! the cap is reached, a new value takes the slot of the value idle the
//! longest, if that one has been idle for `idle_after`; else it is counted
//! under `other`. Values matching a pin pattern always keep their own.
//! Shared and COW writers are admitted apart (one [`WriterLabeler`] each),
//! so commands that only copy-on-write their libraries never push a real
//! shared writer into `other`.

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use regex::Regex;

use super::labels::{UserLabel, WriterLabels, OTHER};

/// How long an admitted value must be idle before a new one may take its
/// slot: long enough that a writer active every few minutes keeps its
/// series, short enough that a week-long run does not freeze its first
/// hour's writers in place.
pub const IDLE_AFTER: Duration = Duration::from_secs(10 * 60);

/// Own-label slots per kind of writer: `comm`, `cgroup` and `user` values.
pub const COMM_SLOTS: usize = 32;
pub const CGROUP_SLOTS: usize = 64;
pub const USER_SLOTS: usize = 32;

/// Values that always keep their own label (`export --keep-comm`,
/// `--keep-cgroup`), and whether writers are labelled by user at all
/// (`--label-user`).
#[derive(Clone, Debug, Default)]
pub struct LabelPins {
    pub comm: Option<Regex>,
    pub cgroup: Option<Regex>,
    pub label_user: bool,
}

impl LabelPins {
    pub fn labeler(&self) -> WriterLabeler {
        WriterLabeler::new(
            ActiveLabels::new(COMM_SLOTS, IDLE_AFTER, self.comm.clone()),
            ActiveLabels::new(CGROUP_SLOTS, IDLE_AFTER, self.cgroup.clone()),
            self.label_user
                .then(|| ActiveLabels::new(USER_SLOTS, IDLE_AFTER, None)),
        )
    }
}

/// One label's admitted values.
#[derive(Debug)]
pub struct ActiveLabels {
    cap: usize,
    idle_after: Duration,
    pinned: Option<Regex>,
    /// Admitted value -> when last active.
    slots: HashMap<String, Instant>,
}

/// What admitting a value decided.
#[derive(Debug, PartialEq, Eq)]
pub struct Admission {
    /// The value itself or `other`.
    pub label: String,
    /// The idle value whose slot it took: its series are to go.
    pub evicted: Option<String>,
}

impl ActiveLabels {
    pub fn new(cap: usize, idle_after: Duration, pinned: Option<Regex>) -> Self {
        Self {
            cap,
            idle_after,
            pinned,
            slots: HashMap::new(),
        }
    }

    /// The label for `value`, active at `now`.
    pub fn admit(&mut self, value: &str, now: Instant) -> Admission {
        let own = |evicted| Admission {
            label: value.to_string(),
            evicted,
        };
        if self.pinned.as_ref().is_some_and(|re| re.is_match(value)) {
            return own(None);
        }
        if let Some(last) = self.slots.get_mut(value) {
            *last = now;
            return own(None);
        }
        if self.slots.len() < self.cap {
            self.slots.insert(value.to_string(), now);
            return own(None);
        }
        let idlest = self
            .slots
            .iter()
            .min_by(|a, b| a.1.cmp(b.1).then_with(|| a.0.cmp(b.0)))
            .map(|(value, last)| (value.clone(), *last));
        match idlest {
            Some((idle, last)) if now.saturating_duration_since(last) >= self.idle_after => {
                self.slots.remove(&idle);
                self.slots.insert(value.to_string(), now);
                own(Some(idle))
            }
            _ => Admission {
                label: OTHER.to_string(),
                evicted: None,
            },
        }
    }
}

/// Labels for one kind of writer (shared or COW), and the series made
/// with them, so that an evicted value's series can be removed.
#[derive(Debug)]
pub struct WriterLabeler {
    comms: ActiveLabels,
    cgroups: ActiveLabels,
    /// None: no `user` label.
    users: Option<ActiveLabels>,
    series: HashSet<WriterLabels>,
}

/// A writer's labels, and the series that are to go (an evicted value's).
pub struct Labelled {
    pub labels: WriterLabels,
    pub stale: Vec<WriterLabels>,
}

impl WriterLabeler {
    pub fn new(comms: ActiveLabels, cgroups: ActiveLabels, users: Option<ActiveLabels>) -> Self {
        Self {
            comms,
            cgroups,
            users,
            series: HashSet::new(),
        }
    }

    /// `writer` is (comm, cgroup, user); the user is used only where
    /// writers are labelled by user.
    pub fn label(
        &mut self,
        writer: (&str, &str, &str),
        fs: String,
        mount: String,
        now: Instant,
    ) -> Labelled {
        let (comm, cgroup, user) = writer;
        let comm = self.comms.admit(comm, now);
        let cgroup = self.cgroups.admit(cgroup, now);
        let user = self.users.as_mut().map(|users| users.admit(user, now));
        let user_evicted = user.as_ref().and_then(|user| user.evicted.clone());
        let mut stale = Vec::new();
        if comm.evicted.is_some() || cgroup.evicted.is_some() || user_evicted.is_some() {
            let gone = |labels: &WriterLabels| {
                comm.evicted.as_deref() == Some(labels.comm.as_str())
                    || cgroup.evicted.as_deref() == Some(labels.cgroup.as_str())
                    || (user_evicted.is_some() && user_evicted == labels.user.0)
            };
            stale = self.series.iter().filter(|l| gone(l)).cloned().collect();
            for labels in &stale {
                self.series.remove(labels);
            }
        }
        let labels = WriterLabels {
            comm: comm.label,
            cgroup: cgroup.label,
            fs,
            mount,
            user: UserLabel(user.map(|user| user.label)),
        };
        self.series.insert(labels.clone());
        Labelled { labels, stale }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    #[test]
    fn the_cap_holds_active_values_and_new_ones_go_to_other() {
        let t0 = Instant::now();
        let mut labels = ActiveLabels::new(2, 10 * MINUTE, None);
        assert_eq!(labels.admit("a", t0).label, "a");
        assert_eq!(labels.admit("b", t0).label, "b");
        assert_eq!(labels.admit("c", t0 + MINUTE).label, OTHER);
        assert_eq!(labels.admit("a", t0 + MINUTE).label, "a");
    }

    #[test]
    fn a_value_idle_long_enough_gives_its_slot_to_an_active_one() {
        let t0 = Instant::now();
        let mut labels = ActiveLabels::new(2, 10 * MINUTE, None);
        labels.admit("old", t0);
        labels.admit("busy", t0);
        labels.admit("busy", t0 + 9 * MINUTE);
        assert_eq!(
            labels.admit("new", t0 + 11 * MINUTE),
            Admission {
                label: "new".into(),
                evicted: Some("old".into())
            }
        );
        assert_eq!(labels.admit("busy", t0 + 11 * MINUTE).label, "busy");
        assert_eq!(labels.admit("old", t0 + 12 * MINUTE).label, OTHER);
    }

    #[test]
    fn pinned_values_always_keep_their_own_label() {
        let t0 = Instant::now();
        let pin = Regex::new("^postgres").expect("a pattern");
        let mut labels = ActiveLabels::new(1, 10 * MINUTE, Some(pin));
        labels.admit("a", t0);
        assert_eq!(labels.admit("postgres", t0).label, "postgres");
        assert_eq!(labels.admit("b", t0).label, OTHER);
    }

    #[test]
    fn an_evicted_values_series_are_named_for_removal() {
        let t0 = Instant::now();
        let labeler = || ActiveLabels::new(1, 10 * MINUTE, None);
        let mut writers = WriterLabeler::new(labeler(), ActiveLabels::new(8, MINUTE, None), None);
        let first = writers.label(("old", "/a", "alice"), "ext4".into(), "/".into(), t0);
        assert!(first.stale.is_empty());
        assert_eq!(first.labels.user.0, None, "no user label unless asked");
        let again = writers.label(("old", "/b", "alice"), "ext4".into(), "/".into(), t0);
        assert!(again.stale.is_empty());
        let new = writers.label(
            ("new", "/a", "alice"),
            "ext4".into(),
            "/".into(),
            t0 + 11 * MINUTE,
        );
        assert_eq!(new.labels.comm, "new");
        let mut stale: Vec<&str> = new.stale.iter().map(|l| l.cgroup.as_str()).collect();
        stale.sort_unstable();
        assert_eq!(stale, ["/a", "/b"], "both series of the evicted comm");
        assert!(new.stale.iter().all(|l| l.comm == "old"));
    }

    #[test]
    fn users_are_labelled_only_when_asked_and_bounded_by_activity() {
        let t0 = Instant::now();
        let pins = LabelPins {
            label_user: true,
            ..LabelPins::default()
        };
        let mut writers = pins.labeler();
        let label = |writers: &mut WriterLabeler, user: &str, at| {
            writers.label(("db", "/", user), "ext4".into(), "/".into(), at)
        };
        for uid in 0..USER_SLOTS {
            let labelled = label(&mut writers, &uid.to_string(), t0);
            assert_eq!(labelled.labels.user.0, Some(uid.to_string()));
        }
        // One user more than the slots, all of them active: `other`.
        assert_eq!(
            label(&mut writers, "late", t0 + MINUTE)
                .labels
                .user
                .0
                .as_deref(),
            Some(OTHER)
        );
        // Once a user has been idle long enough, a new one takes its slot
        // and the idle user's series go.
        for uid in 1..USER_SLOTS {
            label(&mut writers, &uid.to_string(), t0 + 10 * MINUTE);
        }
        let new = label(&mut writers, "new", t0 + 11 * MINUTE);
        assert_eq!(new.labels.user.0.as_deref(), Some("new"));
        assert_eq!(new.stale.len(), 1);
        assert_eq!(new.stale[0].user.0.as_deref(), Some("0"));
    }
}
