//! /etc/passwd, /etc/group and /etc/shadow as text: lookups, and the new
//! text with an account or a group member added. Pure functions: the
//! planner decides what to write, the transaction writes it.

use std::collections::BTreeSet;

/// Whether `s` can stand in a colon-separated passwd, group or shadow
/// field: no `:` (the separator), no newline (the record separator), no
/// other control character.
pub fn field_ok(s: &str) -> bool {
    !s.chars().any(|c| c == ':' || c.is_control())
}

/// A passwd entry (the fields provisioning uses).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// Name.
    pub name: String,
    /// uid.
    pub uid: u32,
    /// Primary gid.
    pub gid: u32,
    /// Home directory.
    pub home: String,
}

/// The accounts of a passwd text.
pub fn accounts(passwd: &str) -> Vec<Account> {
    passwd
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some(Account {
                name: f.first()?.to_string(),
                uid: f.get(2)?.parse().ok()?,
                gid: f.get(3)?.parse().ok()?,
                home: f.get(5)?.to_string(),
            })
        })
        .collect()
}

/// The gid of the group `name` in a group text.
pub fn group_id(group: &str, name: &str) -> Option<u32> {
    group.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.first() == Some(&name)).then(|| f.get(2)?.parse().ok())?
    })
}

/// The lowest id from 1000 that is neither a uid in `passwd` nor a gid in
/// `group`, so a new user's own group can share its number.
pub fn free_id(passwd: &str, group: &str) -> Option<u32> {
    let mut used: BTreeSet<u32> = accounts(passwd).iter().map(|a| a.uid).collect();
    used.extend(
        group
            .lines()
            .filter_map(|l| l.split(':').nth(2)?.parse::<u32>().ok()),
    );
    (1000..60000).find(|i| !used.contains(i))
}

/// `text` with `line` added as its last line.
pub fn with_line(text: &str, line: &str) -> String {
    let mut t = text.to_string();
    if !t.is_empty() && !t.ends_with('\n') {
        t.push('\n');
    }
    t.push_str(line);
    t.push('\n');
    t
}

/// The group text with `user` among the members of `group` (unchanged if
/// it is one already); `None` if there is no such group.
pub fn with_member(group_text: &str, group: &str, user: &str) -> Option<String> {
    let mut found = false;
    let mut out = String::new();
    for l in group_text.lines() {
        let f: Vec<&str> = l.splitn(4, ':').collect();
        if f.first() == Some(&group) && f.len() >= 3 {
            found = true;
            let mut members: Vec<&str> = f
                .get(3)
                .map(|m| m.split(',').filter(|m| !m.is_empty()).collect())
                .unwrap_or_default();
            if !members.contains(&user) {
                members.push(user);
            }
            out.push_str(&format!(
                "{}:{}:{}:{}\n",
                f[0],
                f[1],
                f[2],
                members.join(",")
            ));
        } else {
            out.push_str(l);
            out.push('\n');
        }
    }
    found.then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_with_separators_are_refused() {
        assert!(field_ok("Ops Team, room 3"));
        assert!(!field_ok("x:0:0"));
        assert!(!field_ok("x\nroot2::0:0::/:/bin/sh"));
        assert!(!field_ok("tab\there"));
    }

    #[test]
    fn ids_and_members() {
        let passwd = "root:x:0:0:root:/root:/bin/sh\nweb:x:1000:1000::/var/lib/web:/bin/sh\n";
        let group = "root:x:0:\nweb:x:1000:\nthing:x:1001:\nadm:x:4\n";
        assert_eq!(free_id(passwd, group), Some(1002));
        assert_eq!(group_id(group, "web"), Some(1000));
        assert_eq!(group_id(group, "nope"), None);
        let g = with_member(group, "adm", "ops").unwrap();
        assert!(g.contains("\nadm:x:4:ops\n"), "{g}");
        let g = with_member(&g, "adm", "ops").unwrap();
        assert!(g.contains("\nadm:x:4:ops\n"), "{g}");
        assert!(with_member(group, "wheel", "ops").is_none());
        assert_eq!(with_line("a", "b"), "a\nb\n");
    }
}
