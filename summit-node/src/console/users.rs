//! Who may change state through the socket: root, or a user in the operator group. Users and
//! groups are read from `/etc/passwd` and `/etc/group` (the appliance has no directory service),
//! each time a client connects, so a membership change needs no restart.
//!
//! A user is in a group when the group is the user's primary group (passwd), when the user is
//! listed as a member (group), or when the connecting process runs with the group as its
//! effective group (`sg operators -c ...`; SO_PEERCRED's gid).

use std::io;
use std::path::{Path, PathBuf};

/// Where users and groups are read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserDatabase {
    /// `/etc/passwd`.
    pub passwd_path: PathBuf,
    /// `/etc/group`.
    pub group_path: PathBuf,
}

impl Default for UserDatabase {
    fn default() -> UserDatabase {
        UserDatabase { passwd_path: PathBuf::from("/etc/passwd"), group_path: PathBuf::from("/etc/group") }
    }
}

/// The files read, for one decision.
#[derive(Debug, Clone, Default)]
pub struct UserDatabaseText {
    /// The contents of the passwd file.
    pub passwd: String,
    /// The contents of the group file.
    pub group: String,
}

impl UserDatabase {
    /// Reads both files.
    pub fn read(&self) -> io::Result<UserDatabaseText> {
        Ok(UserDatabaseText { passwd: read_named(&self.passwd_path)?, group: read_named(&self.group_path)? })
    }

    /// The numeric id of group `name`, or an error naming the group and the file.
    pub fn group_id(&self, name: &str) -> io::Result<u32> {
        let text = read_named(&self.group_path)?;
        match find_group(&text, name) {
            Some(group) => Ok(group.gid),
            None => Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "group '{name}' is not in {}; create it or fix the configuration",
                    self.group_path.display()
                ),
            )),
        }
    }
}

fn read_named(path: &Path) -> io::Result<String> {
    std::fs::read_to_string(path)
        .map_err(|error| io::Error::new(error.kind(), format!("cannot read {}: {error}", path.display())))
}

/// One line of `/etc/group`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupEntry<'a> {
    /// The group's name.
    pub name: &'a str,
    /// Its id.
    pub gid: u32,
    /// Supplementary members (user names).
    pub members: Vec<&'a str>,
}

/// One line of `/etc/passwd` (the fields the console needs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserEntry<'a> {
    /// The user's name.
    pub name: &'a str,
    /// Its id.
    pub uid: u32,
    /// Its primary group.
    pub gid: u32,
}

/// Group `name` in `/etc/group` text (`name:password:gid:member,member`). Malformed lines and
/// comments are skipped.
pub fn find_group<'a>(group_text: &'a str, name: &str) -> Option<GroupEntry<'a>> {
    group_text.lines().filter_map(parse_group_line).find(|group| group.name == name)
}

/// The user with id `uid` in `/etc/passwd` text (`name:password:uid:gid:gecos:home:shell`).
pub fn find_user(passwd_text: &str, uid: u32) -> Option<UserEntry<'_>> {
    passwd_text.lines().filter_map(parse_passwd_line).find(|user| user.uid == uid)
}

fn parse_group_line(line: &str) -> Option<GroupEntry<'_>> {
    if line.starts_with('#') {
        return None;
    }
    let mut fields = line.split(':');
    let name = fields.next().filter(|name| !name.is_empty())?;
    let _password = fields.next()?;
    let gid = fields.next()?.trim().parse().ok()?;
    let members =
        fields.next().unwrap_or("").split(',').map(str::trim).filter(|member| !member.is_empty()).collect();
    Some(GroupEntry { name, gid, members })
}

fn parse_passwd_line(line: &str) -> Option<UserEntry<'_>> {
    if line.starts_with('#') {
        return None;
    }
    let mut fields = line.split(':');
    let name = fields.next().filter(|name| !name.is_empty())?;
    let _password = fields.next()?;
    let uid = fields.next()?.trim().parse().ok()?;
    let gid = fields.next()?.trim().parse().ok()?;
    Some(UserEntry { name, uid, gid })
}

/// The connecting process's credentials (SO_PEERCRED).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCredentials {
    /// Effective user id.
    pub uid: u32,
    /// Effective group id.
    pub gid: u32,
    /// Process id.
    pub pid: i32,
}

/// Whether a peer is an operator, and why (for the log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorDecision {
    /// Commands that change state are allowed.
    pub operator: bool,
    /// Why: `root`, `member of group 'ops'`, `not in group 'ops'`...
    pub reason: String,
}

/// Decides from the peer's credentials, the configured operator group and the user database.
pub fn decide_operator(
    peer: PeerCredentials,
    operator_group: Option<&str>,
    database: &UserDatabaseText,
) -> OperatorDecision {
    let decision = |operator: bool, reason: String| OperatorDecision { operator, reason };
    if peer.uid == 0 {
        return decision(true, "root".to_string());
    }
    let Some(group_name) = operator_group else {
        return decision(false, "no operator group configured: only root is an operator".to_string());
    };
    let Some(group) = find_group(&database.group, group_name) else {
        return decision(false, format!("operator group '{group_name}' is not in the group file"));
    };
    if peer.gid == group.gid {
        return decision(true, format!("runs with group '{group_name}'"));
    }
    let Some(user) = find_user(&database.passwd, peer.uid) else {
        return decision(false, format!("uid {} is not in the passwd file", peer.uid));
    };
    if user.gid == group.gid {
        return decision(true, format!("user '{}' has primary group '{group_name}'", user.name));
    }
    if group.members.contains(&user.name) {
        return decision(true, format!("user '{}' is a member of group '{group_name}'", user.name));
    }
    decision(false, format!("user '{}' is not in group '{group_name}'", user.name))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "\
root:x:0:0:root:/root:/bin/bash
# a comment
broken line
alice:x:1000:1000:Alice:/home/alice:/bin/bash
bob:x:1001:1001::/home/bob:/bin/bash
carol:x:1002:2000::/home/carol:/bin/bash
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
";

    const GROUP: &str = "\
root:x:0:
alice:x:1000:
bob:x:1001:
summit-ops:x:2000:alice, dave
summit-console:x:2001:alice,bob
:x:3000:
bad:x:notanumber:bob
";

    fn database() -> UserDatabaseText {
        UserDatabaseText { passwd: PASSWD.to_string(), group: GROUP.to_string() }
    }

    fn peer(uid: u32, gid: u32) -> PeerCredentials {
        PeerCredentials { uid, gid, pid: 4242 }
    }

    #[test]
    fn groups_and_users_parse_skipping_malformed_lines() {
        let group = find_group(GROUP, "summit-ops");
        assert_eq!(group, Some(GroupEntry { name: "summit-ops", gid: 2000, members: vec!["alice", "dave"] }));
        assert_eq!(find_group(GROUP, "root").map(|group| group.members.len()), Some(0));
        assert_eq!(find_group(GROUP, "bad"), None);
        assert_eq!(find_group(GROUP, ""), None);
        assert_eq!(find_user(PASSWD, 1001), Some(UserEntry { name: "bob", uid: 1001, gid: 1001 }));
        assert_eq!(find_user(PASSWD, 4), None);
    }

    #[test]
    fn root_is_always_an_operator() {
        assert!(decide_operator(peer(0, 0), None, &database()).operator);
        assert!(decide_operator(peer(0, 0), Some("summit-ops"), &UserDatabaseText::default()).operator);
    }

    #[test]
    fn without_an_operator_group_only_root_is_an_operator() {
        let decision = decide_operator(peer(1000, 1000), None, &database());
        assert!(!decision.operator);
        assert!(decision.reason.contains("no operator group configured"), "{}", decision.reason);
    }

    #[test]
    fn a_supplementary_member_is_an_operator() {
        let decision = decide_operator(peer(1000, 1000), Some("summit-ops"), &database());
        assert!(decision.operator, "{}", decision.reason);
        assert_eq!(decision.reason, "user 'alice' is a member of group 'summit-ops'");
    }

    #[test]
    fn a_user_whose_primary_group_is_the_operator_group_is_an_operator() {
        let decision = decide_operator(peer(1002, 2000), Some("summit-ops"), &database());
        assert!(decision.operator);
        let decision = decide_operator(peer(1002, 1), Some("summit-ops"), &database());
        assert_eq!(decision.reason, "user 'carol' has primary group 'summit-ops'");
    }

    #[test]
    fn a_process_running_with_the_operator_group_is_an_operator() {
        let decision = decide_operator(peer(1001, 2000), Some("summit-ops"), &database());
        assert!(decision.operator);
        assert_eq!(decision.reason, "runs with group 'summit-ops'");
    }

    #[test]
    fn others_are_read_only_and_the_reason_says_why() {
        let decision = decide_operator(peer(1001, 1001), Some("summit-ops"), &database());
        assert!(!decision.operator);
        assert_eq!(decision.reason, "user 'bob' is not in group 'summit-ops'");
        let decision = decide_operator(peer(65534, 65534), Some("summit-ops"), &database());
        assert!(!decision.operator);
        let decision = decide_operator(peer(5555, 5555), Some("summit-ops"), &database());
        assert_eq!(decision.reason, "uid 5555 is not in the passwd file");
        let decision = decide_operator(peer(1000, 1000), Some("wheel"), &database());
        assert_eq!(decision.reason, "operator group 'wheel' is not in the group file");
    }
}
