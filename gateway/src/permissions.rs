//! Roles and what each may do. A user's role is the token's `role` claim (`employee` without
//! one); the table gives each role its permissions. The defaults are below; `--permissions-file`
//! replaces the permissions of the roles it names and defines new ones. A role the table does not
//! know gets the guests' permissions (the least), and is logged.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use serde::Deserialize;

use crate::error::RequestError;

/// Something a role may be allowed to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Permission {
    /// `room:create`.
    CreateConversations,
    /// `participant:add` and `participant:remove` of others, in their conversations.
    ManageParticipants,
    /// Messages with attachments.
    SendAttachments,
    /// `room:join` of a public conversation they are not a member of.
    JoinPublic,
    /// `message:edit` and `message:delete` of others' messages, in their conversations.
    ModerateMessages,
    /// `room:ban` and `room:unban`, in their conversations.
    Ban,
}

impl Permission {
    /// Its name in the permissions file and in refusals.
    pub fn name(self) -> &'static str {
        match self {
            Self::CreateConversations => "createConversations",
            Self::ManageParticipants => "manageParticipants",
            Self::SendAttachments => "sendAttachments",
            Self::JoinPublic => "joinPublic",
            Self::ModerateMessages => "moderateMessages",
            Self::Ban => "ban",
        }
    }
}

/// The role of a token without a `role` claim.
pub const DEFAULT_ROLE: &str = "employee";
/// The role whose permissions an unknown role gets.
const LEAST_ROLE: &str = "guest";

/// Why the permissions file is refused.
#[derive(Debug, thiserror::Error)]
pub enum PermissionsError {
    /// Unreadable.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Not `{"role": ["permission", ...]}` with known permissions.
    #[error("{path}: {reason} (expected {{\"role\": [\"createConversations\", ...]}})")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
}

/// The permission table.
#[derive(Debug, Clone)]
pub struct Permissions {
    roles: HashMap<String, HashSet<Permission>>,
}

impl Default for Permissions {
    /// Employees create conversations, add and remove participants, send attachments and join
    /// public conversations; guests only send attachments; supervisors may also edit and
    /// delete others' messages and ban, in the conversations they are members of.
    fn default() -> Self {
        use Permission::*;
        let employee = [
            CreateConversations,
            ManageParticipants,
            SendAttachments,
            JoinPublic,
        ];
        let supervisor = [employee.as_slice(), &[ModerateMessages, Ban]].concat();
        let roles = [
            (DEFAULT_ROLE, employee.to_vec()),
            (LEAST_ROLE, vec![SendAttachments]),
            ("supervisor", supervisor),
        ];
        Self {
            roles: roles
                .into_iter()
                .map(|(role, permissions)| (role.to_owned(), permissions.into_iter().collect()))
                .collect(),
        }
    }
}

impl Permissions {
    /// The defaults, with the roles of the file at `path` replaced or added.
    pub fn load(path: &Path) -> Result<Self, PermissionsError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| PermissionsError::Read {
            path: shown.clone(),
            source,
        })?;
        Self::default().with(&text, &shown)
    }

    fn with(mut self, text: &str, path: &str) -> Result<Self, PermissionsError> {
        let roles: HashMap<String, HashSet<Permission>> =
            serde_json::from_str(text).map_err(|error| PermissionsError::Invalid {
                path: path.to_owned(),
                reason: error.to_string(),
            })?;
        self.roles.extend(roles);
        Ok(self)
    }

    /// Whether `role` (the token's claim) has `permission`.
    pub fn allows(&self, role: Option<&str>, permission: Permission) -> bool {
        let role = role.unwrap_or(DEFAULT_ROLE);
        let granted = self.roles.get(role).or_else(|| {
            tracing::warn!(
                role,
                "a role the permission table does not name: a guest's permissions"
            );
            self.roles.get(LEAST_ROLE)
        });
        granted.is_some_and(|granted| granted.contains(&permission))
    }

    /// `FORBIDDEN`, naming the permission, unless `role` has it.
    pub fn require(&self, role: Option<&str>, permission: Permission) -> Result<(), RequestError> {
        if self.allows(role, permission) {
            Ok(())
        } else {
            Err(refusal(role, permission))
        }
    }
}

/// The refusal of what `role` lacks `permission` for.
pub fn refusal(role: Option<&str>, permission: Permission) -> RequestError {
    RequestError::forbidden(format!(
        "the role {} lacks the permission {}",
        role.unwrap_or(DEFAULT_ROLE),
        permission.name()
    ))
}

#[cfg(test)]
mod tests {
    use super::Permission::*;
    use super::*;

    #[test]
    fn the_defaults_are_as_documented() {
        let table = Permissions::default();
        for permission in [
            CreateConversations,
            ManageParticipants,
            SendAttachments,
            JoinPublic,
        ] {
            assert!(table.allows(None, permission));
            assert!(table.allows(Some("employee"), permission));
            assert!(table.allows(Some("supervisor"), permission));
        }
        for permission in [ModerateMessages, Ban] {
            assert!(!table.allows(None, permission));
            assert!(table.allows(Some("supervisor"), permission));
            assert!(!table.allows(Some("guest"), permission));
        }
        assert!(table.allows(Some("guest"), SendAttachments));
        assert!(!table.allows(Some("guest"), CreateConversations));
        assert!(!table.allows(Some("guest"), JoinPublic));
        // An unknown role: a guest's.
        assert!(!table.allows(Some("intern"), CreateConversations));
        assert!(table.allows(Some("intern"), SendAttachments));
    }

    #[test]
    fn a_file_replaces_and_adds_roles() {
        let file = r#"{"guest": ["joinPublic"], "moderator": ["moderateMessages", "ban"]}"#;
        let table = Permissions::default()
            .with(file, "permissions.json")
            .unwrap();
        assert!(table.allows(Some("guest"), JoinPublic));
        assert!(!table.allows(Some("guest"), SendAttachments));
        assert!(table.allows(Some("moderator"), Ban));
        assert!(!table.allows(Some("moderator"), CreateConversations));
        assert!(
            table.allows(Some("supervisor"), Ban),
            "the other roles keep their defaults"
        );
        let error = table.require(Some("moderator"), JoinPublic).unwrap_err();
        assert_eq!(
            error.message,
            "the role moderator lacks the permission joinPublic"
        );
        let bad = Permissions::default().with(r#"{"guest": ["fly"]}"#, "p.json");
        assert!(matches!(bad, Err(PermissionsError::Invalid { .. })));
    }
}
