//! The user a container runs as: a `USER` (or `--user`) of the forms Docker takes — `name`,
//! `uid`, `name:group`, `uid:gid`, `name:gid`, `uid:group` — resolved against the image's own
//! `/etc/passwd` and `/etc/group`, with the semantics of runc's `GetExecUser` (which Docker
//! and containerd use):
//!
//! - a name must be defined in `/etc/passwd`; a number need not be (then its group is 0 and
//!   its home `/`);
//! - without a group, the group is the passwd entry's, and the user also gets every group of
//!   `/etc/group` that lists it as a member (supplementary groups);
//! - with a group, that is the group (a name must be in `/etc/group`, a number need not be),
//!   and there are no supplementary groups.
//!
//! Pure: parses the two files' text.

use std::collections::BTreeSet;

/// Whom a container's process runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecUser {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups, sorted.
    pub additional_gids: Vec<u32>,
    /// The home directory (for `HOME`), `/` when the user has no passwd entry.
    pub home: String,
}

impl ExecUser {
    pub const ROOT: Self = Self {
        uid: 0,
        gid: 0,
        additional_gids: Vec::new(),
        home: String::new(),
    };
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserError {
    #[error("user {user:?} is not defined in the image's /etc/passwd")]
    UnknownUser { user: String },
    #[error("group {group:?} is not defined in the image's /etc/group")]
    UnknownGroup { group: String },
    #[error("user {spec:?} is not of the form user[:group] (names or numeric ids)")]
    Malformed { spec: String },
}

/// One line of `/etc/passwd`: `name:password:uid:gid:gecos:home:shell`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
    home: String,
}

/// One line of `/etc/group`: `name:password:gid:member,member`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

/// An image's accounts: its `/etc/passwd` and `/etc/group` (either may be missing).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Accounts {
    users: Vec<PasswdEntry>,
    groups: Vec<GroupEntry>,
}

impl Accounts {
    /// Parses the files' contents; lines that are not entries (comments, NIS `+` lines, short
    /// or non-numeric ones) are skipped, as libc does.
    pub fn parse(passwd: &str, group: &str) -> Self {
        let fields = |line: &str| -> Vec<String> {
            line.split(':').map(str::to_owned).collect::<Vec<String>>()
        };
        let entries = |text: &str| -> Vec<Vec<String>> {
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('+'))
                .map(fields)
                .collect()
        };
        let users = entries(passwd)
            .into_iter()
            .filter_map(|f| {
                Some(PasswdEntry {
                    name: f.first()?.clone(),
                    uid: f.get(2)?.parse().ok()?,
                    gid: f.get(3)?.parse().ok()?,
                    home: f.get(5).cloned().unwrap_or_default(),
                })
            })
            .collect();
        let groups = entries(group)
            .into_iter()
            .filter_map(|f| {
                Some(GroupEntry {
                    name: f.first()?.clone(),
                    gid: f.get(2)?.parse().ok()?,
                    members: f
                        .get(3)
                        .map(|m| {
                            m.split(',')
                                .map(str::trim)
                                .filter(|m| !m.is_empty())
                                .map(str::to_owned)
                                .collect()
                        })
                        .unwrap_or_default(),
                })
            })
            .collect();
        Self { users, groups }
    }

    /// Resolves `spec` (`user[:group]`; empty means root).
    pub fn resolve(&self, spec: &str) -> Result<ExecUser, UserError> {
        let spec = spec.trim();
        if spec.is_empty() {
            return Ok(self.root());
        }
        let (user, group) = match spec.split_once(':') {
            Some((user, group)) => (user, Some(group)),
            None => (spec, None),
        };
        if user.is_empty() || group.is_some_and(|g| g.is_empty() || g.contains(':')) {
            return Err(UserError::Malformed {
                spec: spec.to_owned(),
            });
        }
        let entry = match user.parse::<u32>() {
            Ok(uid) => self.users.iter().find(|u| u.uid == uid),
            Err(_) => Some(self.users.iter().find(|u| u.name == user).ok_or_else(|| {
                UserError::UnknownUser {
                    user: user.to_owned(),
                }
            })?),
        };
        let uid = entry.map_or_else(|| user.parse().unwrap_or(0), |e| e.uid);
        let home = entry
            .map(|e| e.home.clone())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "/".to_owned());
        let Some(group) = group else {
            // Implicit group: the passwd entry's, plus the groups listing the user.
            let additional_gids: BTreeSet<u32> = entry
                .map(|e| {
                    self.groups
                        .iter()
                        .filter(|g| g.members.contains(&e.name))
                        .map(|g| g.gid)
                        .collect()
                })
                .unwrap_or_default();
            return Ok(ExecUser {
                uid,
                gid: entry.map_or(0, |e| e.gid),
                additional_gids: additional_gids.into_iter().collect(),
                home,
            });
        };
        let gid = match group.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => {
                self.groups
                    .iter()
                    .find(|g| g.name == group)
                    .ok_or_else(|| UserError::UnknownGroup {
                        group: group.to_owned(),
                    })?
                    .gid
            }
        };
        Ok(ExecUser {
            uid,
            gid,
            additional_gids: Vec::new(),
            home,
        })
    }

    fn root(&self) -> ExecUser {
        let home = self
            .users
            .iter()
            .find(|u| u.uid == 0)
            .map_or_else(|| "/root".to_owned(), |u| u.home.clone());
        ExecUser {
            home,
            ..ExecUser::ROOT
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "\
root:x:0:0:root:/root:/bin/sh
# a comment
www:x:1000:1000:web server:/var/www:/bin/false
app:x:1001:1001::/home/app:/bin/sh
broken line
";
    const GROUP: &str = "\
root:x:0:
www:x:1000:
app:x:1001:
staff:x:50:www,app
web:x:2000: www
";

    fn accounts() -> Accounts {
        Accounts::parse(PASSWD, GROUP)
    }

    fn user(uid: u32, gid: u32, additional: &[u32], home: &str) -> ExecUser {
        ExecUser {
            uid,
            gid,
            additional_gids: additional.to_vec(),
            home: home.to_owned(),
        }
    }

    #[test]
    fn names_resolve_with_their_group_and_memberships() {
        let a = accounts();
        assert_eq!(
            a.resolve("www"),
            Ok(user(1000, 1000, &[50, 2000], "/var/www"))
        );
        assert_eq!(a.resolve("app"), Ok(user(1001, 1001, &[50], "/home/app")));
        assert_eq!(a.resolve(""), Ok(user(0, 0, &[], "/root")));
        assert_eq!(a.resolve("root"), Ok(user(0, 0, &[], "/root")));
    }

    #[test]
    fn an_explicit_group_replaces_the_memberships() {
        let a = accounts();
        assert_eq!(a.resolve("www:staff"), Ok(user(1000, 50, &[], "/var/www")));
        assert_eq!(a.resolve("www:7"), Ok(user(1000, 7, &[], "/var/www")));
        assert_eq!(
            a.resolve("1001:web"),
            Ok(user(1001, 2000, &[], "/home/app"))
        );
        assert_eq!(a.resolve("4242:4343"), Ok(user(4242, 4343, &[], "/")));
    }

    #[test]
    fn numeric_users_need_no_entry() {
        let a = accounts();
        assert_eq!(
            a.resolve("1000"),
            Ok(user(1000, 1000, &[50, 2000], "/var/www"))
        );
        assert_eq!(a.resolve("4242"), Ok(user(4242, 0, &[], "/")));
        let none = Accounts::default();
        assert_eq!(
            none.resolve("65534:65534"),
            Ok(user(65534, 65534, &[], "/"))
        );
    }

    #[test]
    fn unknown_names_and_bad_forms_are_errors() {
        let a = accounts();
        assert_eq!(
            a.resolve("nobody"),
            Err(UserError::UnknownUser {
                user: "nobody".into()
            })
        );
        assert_eq!(
            a.resolve("www:wheel"),
            Err(UserError::UnknownGroup {
                group: "wheel".into()
            })
        );
        for bad in [":", "www:", ":50", "a:b:c"] {
            assert!(
                matches!(a.resolve(bad), Err(UserError::Malformed { .. })),
                "{bad}"
            );
        }
        assert!(matches!(
            Accounts::default().resolve("www"),
            Err(UserError::UnknownUser { .. })
        ));
    }
}
