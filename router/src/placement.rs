//! Where every user's sessions are: the router's whole state, in memory, behind one lock.
//!
//! Nodes own their sessions: a node's `Hello` replaces everything the router had of it, and a
//! node whose lease lapses loses all of them. A user's visible status is offline without
//! sessions, offline when invisible, and otherwise the status they set. Every operation notes the
//! users whose visible status may have changed, with what it was before the first change of the
//! current window; [`Placement::take_changes`] then yields only the real changes (a user who left
//! and came back within the window is not one).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chat_proto::v1::{self, Status};

/// One session as the router keeps it.
#[derive(Debug, Clone)]
struct SessionEntry {
    id: Arc<str>,
    node: Arc<str>,
}

#[derive(Debug)]
struct User {
    /// Usually one or two.
    sessions: Vec<SessionEntry>,
    status: Status,
    /// Who hears of this user's presence; unknown until a node says (their coming online waits).
    conversations: Option<Arc<[String]>>,
}

impl User {
    fn visible(&self) -> Status {
        match self.status {
            _ if self.sessions.is_empty() => Status::Offline,
            Status::Invisible => Status::Offline,
            status => status,
        }
    }
}

#[derive(Debug)]
struct Node {
    /// (user, session) of every session on the node.
    sessions: HashSet<(Arc<str>, Arc<str>)>,
    /// Tells this attachment apart from a later one of the same node.
    generation: u64,
    expires: Instant,
}

/// What others saw of a user when the window's first change came.
#[derive(Debug)]
struct Before {
    visible: Status,
    conversations: Arc<[String]>,
    /// When the first change came.
    at: Instant,
}

/// The answer to an `Opened`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admission {
    pub admitted: bool,
    /// The user's sessions, this one included when admitted.
    pub sessions: usize,
}

/// The placement of every session the router owns.
#[derive(Debug)]
pub struct Placement {
    users: HashMap<Arc<str>, User>,
    nodes: HashMap<Arc<str>, Node>,
    max_sessions_per_user: usize,
    /// How long a user must stay gone before others hear they went offline.
    offline_delay: Duration,
    changed: HashMap<Arc<str>, Before>,
}

impl Placement {
    /// An empty placement that admits at most `max_sessions_per_user` sessions per user, and
    /// tells of a user going offline once they have been gone for `offline_delay`.
    pub fn new(max_sessions_per_user: usize, offline_delay: Duration) -> Self {
        Self {
            users: HashMap::new(),
            nodes: HashMap::new(),
            max_sessions_per_user,
            offline_delay,
            changed: HashMap::new(),
        }
    }

    /// A node (re)attaches with everything it has: what the router had of it is replaced. Its
    /// `departed` sessions closed while it could not tell the router: their users are noted as
    /// having been visible, so that they go offline if they have no session left.
    pub fn hello(
        &mut self,
        node_id: &str,
        generation: u64,
        expires: Instant,
        sessions: Vec<v1::Session>,
        departed: Vec<v1::Session>,
    ) {
        self.drop_node(node_id);
        let node: Arc<str> = node_id.into();
        self.nodes.insert(
            Arc::clone(&node),
            Node {
                sessions: HashSet::new(),
                generation,
                expires,
            },
        );
        for session in sessions {
            self.add(&node, session, true);
        }
        for session in departed {
            let user_id: Arc<str> = session.user_id.as_str().into();
            if !self.changed.contains_key(&user_id) && !self.users.contains_key(&user_id) {
                self.changed.insert(
                    user_id,
                    Before {
                        visible: Status::Online,
                        conversations: session.conversation_ids.into(),
                        at: Instant::now(),
                    },
                );
            }
        }
    }

    /// Whether `generation` is the node's current attachment; updates of an older one (a stream
    /// that has not noticed it was replaced) are ignored.
    pub fn is_current(&self, node_id: &str, generation: u64) -> bool {
        self.nodes
            .get(node_id)
            .is_some_and(|n| n.generation == generation)
    }

    /// Extends a node's lease.
    pub fn renew(&mut self, node_id: &str, expires: Instant) {
        if let Some(node) = self.nodes.get_mut(node_id) {
            node.expires = expires;
        }
    }

    /// A session opens on `node_id`; refused when the user has their limit of sessions (not
    /// counting the one it replaces, which is closed).
    pub fn open(&mut self, node_id: &str, session: v1::Session, replaces: &str) -> Admission {
        let Some((node, _)) = self.nodes.get_key_value(node_id) else {
            return Admission {
                admitted: false,
                sessions: 0,
            };
        };
        let node = Arc::clone(node);
        if !replaces.is_empty() {
            self.close(&session.user_id, replaces);
        }
        let sessions = self.users.get(session.user_id.as_str()).map_or(0, |u| {
            u.sessions
                .iter()
                .filter(|s| *s.id != *session.session_id)
                .count()
        });
        if sessions >= self.max_sessions_per_user {
            return Admission {
                admitted: false,
                sessions,
            };
        }
        self.add(&node, session, false);
        Admission {
            admitted: true,
            sessions: sessions + 1,
        }
    }

    /// A session closes, wherever it was.
    pub fn close(&mut self, user_id: &str, session_id: &str) {
        let Some((user_id, user)) = self.users.get_key_value(user_id) else {
            return;
        };
        let Some(at) = user.sessions.iter().position(|s| *s.id == *session_id) else {
            return;
        };
        let user_id = Arc::clone(user_id);
        self.note(&user_id);
        let user = self
            .users
            .get_mut(&user_id)
            .expect("the user was just found");
        let session = user.sessions.swap_remove(at);
        if user.sessions.is_empty() {
            self.users.remove(&user_id);
        }
        if let Some(node) = self.nodes.get_mut(&session.node) {
            node.sessions.remove(&(user_id, session.id));
        }
    }

    /// A user's conversations, as one of their sessions found them.
    pub fn set_conversations(&mut self, user_id: &str, conversation_ids: Vec<String>) {
        if let Some(user) = self.users.get_mut(user_id) {
            user.conversations = Some(conversation_ids.into());
        }
    }

    /// Users joined (`joined`) or left a conversation: it is added to or taken from who hears of
    /// each one's presence, the pending change of one who just left included. A user whose
    /// conversations no node has told yet keeps them unknown: the node's list will have it.
    pub fn members_changed(&mut self, conversation_id: &str, joined: &[String], left: &[String]) {
        let changes = joined
            .iter()
            .map(|user| (user, true))
            .chain(left.iter().map(|user| (user, false)));
        for (user_id, member) in changes {
            if let Some(User {
                conversations: Some(conversations),
                ..
            }) = self.users.get_mut(user_id.as_str())
            {
                *conversations = with_member(conversations, conversation_id, member);
            }
            if let Some(before) = self.changed.get_mut(user_id.as_str()) {
                before.conversations = with_member(&before.conversations, conversation_id, member);
            }
        }
    }

    /// The nodes of each user, each node once.
    pub fn nodes_of(&self, user_ids: Vec<String>) -> Vec<v1::UserNodes> {
        user_ids
            .into_iter()
            .map(|user_id| {
                let mut node_ids: Vec<String> = self
                    .users
                    .get(user_id.as_str())
                    .map_or_else(Vec::new, |user| {
                        user.sessions.iter().map(|s| s.node.to_string()).collect()
                    });
                node_ids.sort_unstable();
                node_ids.dedup();
                v1::UserNodes { user_id, node_ids }
            })
            .collect()
    }

    /// A user sets their status (for all their sessions).
    pub fn set_status(&mut self, user_id: &str, status: Status) {
        let Some((user_id, _)) = self.users.get_key_value(user_id) else {
            return;
        };
        let user_id = Arc::clone(user_id);
        self.note(&user_id);
        if let Some(user) = self.users.get_mut(&user_id) {
            user.status = status;
        }
    }

    /// Drops the nodes whose lease lapsed before `now`, with their sessions; returns their ids.
    /// Their users have been unreachable since before the lapse: no offline delay for them.
    pub fn expire(&mut self, now: Instant) -> Vec<Arc<str>> {
        let lapsed: Vec<Arc<str>> = self
            .nodes
            .iter()
            .filter(|(_, node)| node.expires <= now)
            .map(|(id, _)| Arc::clone(id))
            .collect();
        let gone_since = now.checked_sub(self.offline_delay).unwrap_or(now);
        for node in &lapsed {
            self.drop_node_at(node, gone_since);
        }
        lapsed
    }

    /// The sessions of a user, with their nodes.
    pub fn sessions_of(&self, user_id: &str) -> Vec<v1::NodeSession> {
        self.users.get(user_id).map_or_else(Vec::new, |user| {
            user.sessions
                .iter()
                .map(|s| v1::NodeSession {
                    node_id: s.node.to_string(),
                    session_id: s.id.to_string(),
                })
                .collect()
        })
    }

    /// What others see of a user.
    pub fn visible(&self, user_id: &str) -> Status {
        self.users
            .get(user_id)
            .map_or(Status::Offline, User::visible)
    }

    /// What others were last told of a user: a change noted since the last publication (still
    /// in the window, or within the offline delay) is not told yet.
    pub fn announced(&self, user_id: &str) -> Status {
        self.changed
            .get(user_id)
            .map_or_else(|| self.visible(user_id), |before| before.visible)
    }

    /// Sessions per node, and the users with at least one session.
    pub fn stats(&self) -> (Vec<(Arc<str>, usize)>, usize) {
        let nodes = self
            .nodes
            .iter()
            .map(|(id, node)| (Arc::clone(id), node.sessions.len()))
            .collect();
        (nodes, self.users.len())
    }

    /// The real changes of visible status since the last call, as of `now`. Stay noted for a
    /// later call: a user whose conversations are not known yet (who would hear of them?), and
    /// a user gone for less than the offline delay (a reconnection, a drained node's clients
    /// moving over, causes no offline-online flicker).
    pub fn take_changes(&mut self, now: Instant) -> Vec<(Arc<str>, Change)> {
        let changed = std::mem::take(&mut self.changed);
        let mut changes = Vec::with_capacity(changed.len());
        for (user_id, before) in changed {
            let current = self.visible(&user_id);
            if current == before.visible {
                continue;
            }
            if current == Status::Offline && now < before.at + self.offline_delay {
                self.changed.insert(user_id, before);
                continue;
            }
            let conversations = match self.users.get(&user_id) {
                None => before.conversations,
                Some(User {
                    conversations: Some(conversations),
                    ..
                }) => Arc::clone(conversations),
                Some(_) => {
                    self.changed.insert(user_id, before);
                    continue;
                }
            };
            let change = Change {
                previous: before.visible,
                current,
                conversations,
            };
            changes.push((user_id, change));
        }
        changes
    }

    /// Ends the grace after a restart, while the nodes re-registered: users with sessions did not
    /// change (the router only had not heard of them), so their notes go; users noted during the
    /// grace who have no session left were online before (a node had them, or told of their
    /// departure) and go offline.
    pub fn end_grace(&mut self) {
        let users = &self.users;
        self.changed
            .retain(|user_id, _| !users.contains_key(user_id));
        for before in self.changed.values_mut() {
            before.visible = Status::Online;
        }
    }

    /// Adds a session; its conversations count when `known`.
    fn add(&mut self, node: &Arc<str>, session: v1::Session, known: bool) {
        let user_id: Arc<str> = session.user_id.as_str().into();
        let session_id: Arc<str> = session.session_id.as_str().into();
        self.note(&user_id);
        let status = Status::try_from(session.status).unwrap_or(Status::Online);
        let user = self
            .users
            .entry(Arc::clone(&user_id))
            .or_insert_with(|| User {
                sessions: Vec::with_capacity(1),
                status: if status == Status::Offline {
                    Status::Online
                } else {
                    status
                },
                conversations: None,
            });
        user.sessions.retain(|s| s.id != session_id);
        user.sessions.push(SessionEntry {
            id: Arc::clone(&session_id),
            node: Arc::clone(node),
        });
        if known {
            user.conversations = Some(session.conversation_ids.into());
        }
        if let Some(node) = self.nodes.get_mut(node) {
            node.sessions.insert((user_id, session_id));
        }
    }

    fn drop_node(&mut self, node_id: &str) {
        self.drop_node_at(node_id, Instant::now());
    }

    /// Drops a node's sessions, their users' changes noted as of `at`.
    fn drop_node_at(&mut self, node_id: &str, at: Instant) {
        let Some(node) = self.nodes.remove(node_id) else {
            return;
        };
        for (user_id, session_id) in node.sessions {
            self.note_at(&user_id, at);
            if let Some(user) = self.users.get_mut(&user_id) {
                user.sessions.retain(|s| s.id != session_id);
                if user.sessions.is_empty() {
                    self.users.remove(&user_id);
                }
            }
        }
    }

    /// Notes what others see of `user_id` before its first change of the window.
    fn note(&mut self, user_id: &Arc<str>) {
        self.note_at(user_id, Instant::now());
    }

    fn note_at(&mut self, user_id: &Arc<str>, at: Instant) {
        if self.changed.contains_key(user_id) {
            return;
        }
        let (visible, conversations) = self.users.get(user_id).map_or_else(
            || (Status::Offline, Arc::from(Vec::new())),
            |u| {
                (
                    u.visible(),
                    u.conversations
                        .clone()
                        .unwrap_or_else(|| Arc::from(Vec::new())),
                )
            },
        );
        self.changed.insert(
            Arc::clone(user_id),
            Before {
                visible,
                conversations,
                at,
            },
        );
    }
}

/// `conversations` with `conversation_id` in it (`member`) or not.
fn with_member(conversations: &[String], conversation_id: &str, member: bool) -> Arc<[String]> {
    let others = conversations.iter().filter(|c| **c != *conversation_id);
    if member {
        others
            .cloned()
            .chain([conversation_id.to_owned()])
            .collect()
    } else {
        others.cloned().collect()
    }
}

/// A real change of what others see of a user.
#[derive(Debug, Clone)]
pub struct Change {
    pub previous: Status,
    pub current: Status,
    pub conversations: Arc<[String]>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(user: &str, id: &str, conversations: &[&str]) -> v1::Session {
        v1::Session {
            user_id: user.into(),
            session_id: id.into(),
            status: Status::Online.into(),
            conversation_ids: conversations.iter().map(|c| c.to_string()).collect(),
        }
    }

    fn attached(nodes: &[&str]) -> Placement {
        let mut placement = Placement::new(2, Duration::ZERO);
        let later = Instant::now() + Duration::from_secs(60);
        for node in nodes {
            placement.hello(node, 1, later, Vec::new(), Vec::new());
        }
        placement
    }

    fn changes(placement: &mut Placement) -> Vec<(String, Status, Status)> {
        let mut changes: Vec<_> = placement
            .take_changes(Instant::now())
            .into_iter()
            .map(|(user, c)| (user.to_string(), c.previous, c.current))
            .collect();
        changes.sort_by(|a, b| a.0.cmp(&b.0));
        changes
    }

    #[test]
    fn a_user_is_online_from_the_first_session_to_the_last() {
        let mut placement = attached(&["a", "b"]);
        assert!(placement.open("a", session("ann", "1", &[]), "").admitted);
        // Nobody hears of it before the router knows who would.
        assert!(changes(&mut placement).is_empty());
        placement.set_conversations("ann", vec!["c".into()]);
        assert_eq!(
            changes(&mut placement),
            [("ann".into(), Status::Offline, Status::Online)]
        );
        assert!(placement.open("b", session("ann", "2", &[]), "").admitted);
        placement.close("ann", "1");
        assert!(changes(&mut placement).is_empty());
        placement.close("ann", "2");
        assert_eq!(
            changes(&mut placement),
            [("ann".into(), Status::Online, Status::Offline)]
        );
    }

    #[test]
    fn what_others_were_told_lags_until_the_change_is_published() {
        let mut placement = attached(&["a"]);
        placement.open("a", session("ann", "1", &[]), "");
        placement.set_conversations("ann", vec!["c".into()]);
        // Online, but nobody has been told yet: an introduction now would tell it twice.
        assert_eq!(placement.visible("ann"), Status::Online);
        assert_eq!(placement.announced("ann"), Status::Offline);
        changes(&mut placement);
        assert_eq!(placement.announced("ann"), Status::Online);
        placement.close("ann", "1");
        assert_eq!(placement.announced("ann"), Status::Online);
        changes(&mut placement);
        assert_eq!(placement.announced("ann"), Status::Offline);
    }

    #[test]
    fn a_conversation_made_as_a_member_leaves_still_hears_of_the_leaving() {
        let mut placement = attached(&["a", "b"]);
        placement.open("a", session("ann", "1", &[]), "");
        placement.set_conversations("ann", vec!["old".into()]);
        placement.open("b", session("bob", "2", &[]), "");
        placement.set_conversations("bob", Vec::new());
        changes(&mut placement);
        // Ann's close reaches the router before the conversation made with her a moment earlier.
        placement.close("ann", "1");
        placement.members_changed("new", &["ann".into(), "bob".into()], &[]);
        let offline = placement.take_changes(Instant::now());
        assert_eq!(offline.len(), 1);
        assert_eq!(&*offline[0].1.conversations, ["old", "new"]);
        // Bob, still connected, is heard of in it; leaving it takes it away again.
        let nodes = placement.nodes_of(vec!["bob".into(), "ann".into()]);
        assert_eq!(nodes[0].node_ids, ["b"]);
        assert!(nodes[1].node_ids.is_empty());
        placement.members_changed("other", &["bob".into()], &[]);
        placement.members_changed("new", &[], &["bob".into()]);
        placement.close("bob", "2");
        let offline = placement.take_changes(Instant::now());
        assert_eq!(&*offline[0].1.conversations, ["other"]);
    }

    #[test]
    fn leaving_and_coming_back_within_a_window_is_no_change() {
        let mut placement = attached(&["a"]);
        placement.open("a", session("ann", "1", &[]), "");
        placement.set_conversations("ann", Vec::new());
        changes(&mut placement);
        placement.close("ann", "1");
        placement.open("a", session("ann", "2", &[]), "");
        assert!(changes(&mut placement).is_empty());
    }

    #[test]
    fn the_limit_counts_every_node_but_not_the_session_replaced() {
        let mut placement = attached(&["a", "b"]);
        assert!(placement.open("a", session("ann", "1", &[]), "").admitted);
        assert!(placement.open("b", session("ann", "2", &[]), "").admitted);
        let refused = placement.open("b", session("ann", "3", &[]), "");
        assert_eq!(
            refused,
            Admission {
                admitted: false,
                sessions: 2
            }
        );
        let resumed = placement.open("b", session("ann", "3", &[]), "1");
        assert_eq!(
            resumed,
            Admission {
                admitted: true,
                sessions: 2
            }
        );
        assert_eq!(placement.sessions_of("ann").len(), 2);
    }

    #[test]
    fn a_lapsed_node_takes_its_sessions_with_it() {
        let mut placement = Placement::new(5, Duration::ZERO);
        let now = Instant::now();
        placement.hello("a", 1, now, vec![session("ann", "1", &["c"])], Vec::new());
        placement.hello(
            "b",
            2,
            now + Duration::from_secs(60),
            vec![session("bob", "2", &["c"])],
            Vec::new(),
        );
        placement.take_changes(Instant::now());
        assert_eq!(placement.expire(Instant::now()).len(), 1);
        assert_eq!(
            changes(&mut placement),
            [("ann".into(), Status::Online, Status::Offline)]
        );
        assert_eq!(placement.visible("bob"), Status::Online);
        assert!(!placement.is_current("a", 1));
    }

    #[test]
    fn invisible_is_offline_to_others() {
        let mut placement = attached(&["a"]);
        placement.open("a", session("ann", "1", &[]), "");
        placement.set_conversations("ann", Vec::new());
        changes(&mut placement);
        placement.set_status("ann", Status::Invisible);
        assert_eq!(placement.visible("ann"), Status::Offline);
        assert_eq!(
            changes(&mut placement),
            [("ann".into(), Status::Online, Status::Offline)]
        );
        placement.set_status("ann", Status::Busy);
        assert_eq!(
            changes(&mut placement),
            [("ann".into(), Status::Offline, Status::Busy)]
        );
    }

    #[test]
    fn after_a_restart_only_departures_are_changes() {
        let mut placement = Placement::new(5, Duration::ZERO);
        let later = Instant::now() + Duration::from_secs(60);
        placement.hello(
            "a",
            1,
            later,
            vec![session("ann", "1", &["c"]), session("bob", "2", &["c"])],
            vec![session("cid", "3", &["c"])],
        );
        placement.close("bob", "2");
        placement.end_grace();
        assert_eq!(
            changes(&mut placement),
            [
                ("bob".into(), Status::Online, Status::Offline),
                ("cid".into(), Status::Online, Status::Offline)
            ]
        );
    }
}

#[cfg(test)]
mod offline_delay {
    use super::*;

    #[test]
    fn a_user_is_offline_to_others_only_once_gone_for_the_delay() {
        let delay = Duration::from_secs(5);
        let mut placement = Placement::new(5, delay);
        let later = Instant::now() + Duration::from_secs(60);
        placement.hello("a", 1, later, Vec::new(), Vec::new());
        let session = |id: &str| v1::Session {
            user_id: "ann".into(),
            session_id: id.into(),
            status: Status::Online.into(),
            conversation_ids: vec!["c".into()],
        };
        placement.hello("a", 1, later, vec![session("1")], Vec::new());
        placement.take_changes(Instant::now());
        placement.close("ann", "1");
        assert!(placement.take_changes(Instant::now()).is_empty());
        // Back (a drained node's client on another one) before the delay: nothing at all.
        placement.open("a", session("2"), "");
        assert!(placement.take_changes(Instant::now() + delay).is_empty());
        placement.close("ann", "2");
        let changes = placement.take_changes(Instant::now() + delay);
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].1.current, Status::Offline);
    }
}
