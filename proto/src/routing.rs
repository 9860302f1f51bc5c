//! Clients of the routers: the users are split over one or several router instances by hash of
//! user id ([`Routers::owner`]); every call about a user goes to its owner, and calls about many
//! users are split by owner and merged. Channels connect lazily and reconnect by themselves;
//! every call has a timeout, so a router that is down costs a caller at most that.

use std::collections::HashMap;
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

use crate::subjects::fnv1a;
use crate::v1::{self, router_client::RouterClient};

/// Why a router call failed.
#[derive(Debug, thiserror::Error)]
pub enum RoutingError {
    /// A router URL does not parse.
    #[error("bad router URL {url:?}: {reason}")]
    Url { url: String, reason: String },
    /// The owner router did not answer (down, unreachable, or too slow).
    #[error("router unavailable: {0}")]
    Unavailable(String),
}

impl From<tonic::Status> for RoutingError {
    fn from(status: tonic::Status) -> Self {
        Self::Unavailable(status.message().to_owned())
    }
}

/// Checks that `url` is a router's address as the channels use it, `http://host:port` with
/// nothing after; the endpoint for it, or why not. `https` is refused: this build has no TLS, so
/// every call would fail.
pub fn check_url(url: &str) -> Result<Endpoint, String> {
    if url.trim().is_empty() {
        return Err("it is empty".to_owned());
    }
    let endpoint =
        Endpoint::from_shared(url.to_owned()).map_err(|e| e.to_string().to_ascii_lowercase())?;
    let uri = endpoint.uri();
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => return Err("https needs TLS, which this build lacks: use http".to_owned()),
        Some(other) => return Err(format!("the scheme must be http, not {other}")),
        None => return Err("it has no scheme: write http://host:port".to_owned()),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err("it has no host".to_owned());
    }
    match uri.port_u16() {
        None => return Err("it has no port".to_owned()),
        Some(0) => return Err("port 0 is not a router's port".to_owned()),
        Some(_) => {}
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err("a path or query would be ignored: give only http://host:port".to_owned());
    }
    Ok(endpoint)
}

/// The routers, in the order every gateway and worker is given them (the order decides owners).
#[derive(Debug, Clone)]
pub struct Routers {
    clients: Vec<RouterClient<Channel>>,
}

impl Routers {
    /// Clients of `urls` (`http://host:port`), each call bounded by `timeout`. Nothing connects
    /// until the first call.
    pub fn new(urls: &[String], timeout: Duration) -> Result<Self, RoutingError> {
        let clients = urls
            .iter()
            .map(|url| {
                let endpoint = check_url(url).map_err(|reason| RoutingError::Url {
                    url: url.clone(),
                    reason,
                })?;
                let channel = endpoint
                    .connect_timeout(timeout)
                    .timeout(timeout)
                    .tcp_nodelay(true)
                    .connect_lazy();
                Ok(RouterClient::new(channel))
            })
            .collect::<Result<_, RoutingError>>()?;
        Ok(Self { clients })
    }

    /// How many routers share the users.
    pub fn len(&self) -> usize {
        self.clients.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }

    /// The index of the router that owns `user_id`.
    pub fn owner(&self, user_id: &str) -> usize {
        (fnv1a(user_id) % self.clients.len().max(1) as u64) as usize
    }

    /// The client of router `index`.
    pub fn client(&self, index: usize) -> RouterClient<Channel> {
        self.clients[index].clone()
    }

    /// Tells the owners of `joined` and `left` that they joined or left `conversation_id`, and
    /// returns the nodes of each of them; `None` when an owner router may not know all of them
    /// yet (it just started).
    pub async fn members_changed(
        &self,
        conversation_id: &str,
        joined: Vec<String>,
        left: Vec<String>,
    ) -> Result<Option<HashMap<String, Vec<String>>>, RoutingError> {
        let mut by_owner: Vec<(Vec<String>, Vec<String>)> = vec![Default::default(); self.len()];
        for user_id in joined {
            by_owner[self.owner(&user_id)].0.push(user_id);
        }
        for user_id in left {
            by_owner[self.owner(&user_id)].1.push(user_id);
        }
        // The owners at once: one that hangs costs the caller one timeout, not one each.
        let calls = by_owner
            .into_iter()
            .enumerate()
            .filter(|(_, (joined, left))| !joined.is_empty() || !left.is_empty())
            .map(|(index, (joined, left))| {
                let request = v1::MembersChangedRequest {
                    conversation_id: conversation_id.to_owned(),
                    joined,
                    left,
                };
                let mut client = self.client(index);
                async move { client.members_changed(request).await }
            });
        let mut nodes = HashMap::new();
        let mut complete = true;
        for reply in futures_util::future::join_all(calls).await {
            let reply = reply?.into_inner();
            complete &= reply.complete;
            nodes.extend(reply.users.into_iter().map(|u| (u.user_id, u.node_ids)));
        }
        Ok(complete.then_some(nodes))
    }

    /// What others see of each of `user_ids`, or (`announced`) what they were last told of it.
    pub async fn presence(
        &self,
        user_ids: Vec<String>,
        announced: bool,
    ) -> Result<HashMap<String, v1::Status>, RoutingError> {
        let mut statuses = HashMap::with_capacity(user_ids.len());
        for (index, user_ids) in self.split(user_ids) {
            let reply = self
                .client(index)
                .presence(v1::PresenceRequest {
                    user_ids,
                    announced,
                })
                .await?
                .into_inner();
            statuses.extend(reply.statuses.into_iter().map(|s| {
                let status = v1::Status::try_from(s.status).unwrap_or(v1::Status::Offline);
                (s.user_id, status)
            }));
        }
        Ok(statuses)
    }

    /// Which of `member_ids` are visibly online.
    pub async fn online_members(
        &self,
        member_ids: Vec<String>,
    ) -> Result<Vec<String>, RoutingError> {
        let mut online = Vec::new();
        for (index, member_ids) in self.split(member_ids) {
            let reply = self
                .client(index)
                .online_members(v1::OnlineMembersRequest { member_ids })
                .await?
                .into_inner();
            online.extend(reply.user_ids);
        }
        Ok(online)
    }

    /// Sessions per node over every router, and the users online.
    pub async fn cluster_stats(&self) -> Result<v1::ClusterStatsReply, RoutingError> {
        let mut sessions: HashMap<String, u64> = HashMap::new();
        let mut users_online = 0;
        for index in 0..self.len() {
            let reply = self
                .client(index)
                .cluster_stats(v1::ClusterStatsRequest {})
                .await?
                .into_inner();
            users_online += reply.users_online;
            for node in reply.nodes {
                *sessions.entry(node.node_id).or_default() += node.sessions;
            }
        }
        let mut nodes: Vec<_> = sessions
            .into_iter()
            .map(|(node_id, sessions)| v1::NodeStats { node_id, sessions })
            .collect();
        nodes.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        Ok(v1::ClusterStatsReply {
            nodes,
            users_online,
        })
    }

    /// `user_ids` by owner.
    fn split(&self, user_ids: Vec<String>) -> Vec<(usize, Vec<String>)> {
        let mut by_owner: Vec<Vec<String>> = vec![Vec::new(); self.len()];
        for user_id in user_ids {
            by_owner[self.owner(&user_id)].push(user_id);
        }
        by_owner
            .into_iter()
            .enumerate()
            .filter(|(_, ids)| !ids.is_empty())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn users_are_split_by_owner_the_same_everywhere() {
        let urls: Vec<String> = (0..3)
            .map(|i| format!("http://127.0.0.1:{}", 1 + i))
            .collect();
        let routers = Routers::new(&urls, Duration::from_secs(1)).unwrap();
        let owners: Vec<usize> = (0..300).map(|i| routers.owner(&format!("u{i}"))).collect();
        for index in 0..3 {
            let owned = owners.iter().filter(|&&o| o == index).count();
            assert!(
                (60..=140).contains(&owned),
                "router {index} owns {owned} of 300"
            );
        }
        let again = Routers::new(&urls, Duration::from_secs(1)).unwrap();
        assert!((0..300).all(|i| again.owner(&format!("u{i}")) == owners[i]));
        let split = routers.split((0..300).map(|i| format!("u{i}")).collect());
        assert_eq!(split.iter().map(|(_, ids)| ids.len()).sum::<usize>(), 300);
        assert!(Routers::new(&["not a url".into()], Duration::from_secs(1)).is_err());
    }
}
