//! What an image says about running it (its config's `Entrypoint`, `Cmd`,
//! `Env`, `WorkingDir` and `User`), where it came from (for provenance),
//! and the files of it a build needs to apply those defaults: its
//! `/etc/passwd` and `/etc/group` (users by name) and where its entrypoint
//! is on `PATH` (the device runs `argv[0]` by absolute path).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::tree::{Kind, Tree};

/// The part of an image config's `config` object cairn applies.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct ImageConfig {
    /// `Entrypoint`.
    #[serde(rename = "Entrypoint", default)]
    pub entrypoint: Option<Vec<String>>,
    /// `Cmd`.
    #[serde(rename = "Cmd", default)]
    pub cmd: Option<Vec<String>>,
    /// `Env` (`NAME=value`).
    #[serde(rename = "Env", default)]
    pub env: Option<Vec<String>>,
    /// `WorkingDir`.
    #[serde(rename = "WorkingDir", default)]
    pub working_dir: Option<String>,
    /// `User`: `user`, `uid`, `user:group`, `uid:gid`, ...
    #[serde(rename = "User", default)]
    pub user: Option<String>,
}

impl ImageConfig {
    /// `Entrypoint` followed by `Cmd`, as Docker runs them.
    pub fn argv(&self) -> Vec<String> {
        self.entrypoint.iter().flatten().chain(self.cmd.iter().flatten()).cloned().collect()
    }
}

/// One layer of an image, for provenance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageLayerInfo {
    /// The blob's digest (`sha256:...`) as stored, if known (a `docker
    /// save` of the older layout names layers by id only).
    pub digest: Option<String>,
    /// The uncompressed tar's digest (`rootfs.diff_ids`), checked.
    pub diff_id: String,
    /// The descriptor's media type.
    pub media_type: Option<String>,
    /// The descriptor's annotations.
    pub annotations: BTreeMap<String, String>,
}

/// An image a layer was built from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ImageInfo {
    /// `oci` (a layout, directory or tar) or `docker-archive`.
    pub format: String,
    /// The image manifest's digest (OCI only).
    pub manifest_digest: Option<String>,
    /// The config blob's digest.
    pub config_digest: Option<String>,
    /// The manifest's annotations (OCI), e.g. `org.opencontainers.image.source`.
    pub annotations: BTreeMap<String, String>,
    /// A `docker save` image's `RepoTags`.
    pub repo_tags: Vec<String>,
    /// Its layers, lowest first.
    pub layers: Vec<ImageLayerInfo>,
    /// Its run configuration.
    pub config: ImageConfig,
    /// What the build found in its files ([`ImageInfo::inspect_tree`]).
    #[serde(skip)]
    pub files: ImageFiles,
}

/// Files of an image a build reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageFiles {
    /// `/etc/passwd`, if a regular file (symlinks followed) of at most 1 MiB.
    pub passwd: Option<String>,
    /// `/etc/group`, likewise.
    pub group: Option<String>,
    /// Where `Entrypoint + Cmd`'s `argv[0]` is: itself if absolute, else
    /// the first `PATH` directory (of the image's `Env`, or the default
    /// path) holding it.
    pub argv0: Option<String>,
}

/// The `PATH` cairn gives a container whose environment has none.
pub const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin";

impl ImageInfo {
    /// Read what the build needs from the image's (merged) tree.
    pub fn inspect_tree(&mut self, tree: &Tree) {
        let text = |p: &[u8]| tree.read_file(p, 1 << 20).map(|b| String::from_utf8_lossy(&b).into_owned());
        self.files.passwd = text(b"/etc/passwd");
        self.files.group = text(b"/etc/group");
        let argv = self.config.argv();
        let path = env_value(self.config.env.iter().flatten(), "PATH").unwrap_or(DEFAULT_PATH);
        let cwd = self.config.working_dir.as_deref().filter(|w| !w.is_empty()).unwrap_or("/");
        self.files.argv0 = argv.first().and_then(|a| find_program(tree, a, path, cwd));
    }
}

/// The value of `NAME` in `NAME=value` entries (the last one wins).
pub fn env_value<'e>(env: impl Iterator<Item = &'e String>, name: &str) -> Option<&'e str> {
    env.filter_map(|e| e.split_once('=')).filter(|(k, _)| *k == name).map(|(_, v)| v).last()
}

/// `base` with `over`'s entries replacing those of the same name, new
/// names appended (as Docker merges an image's `Env` with `--env`).
pub fn merge_env(base: &[String], over: &[String]) -> Vec<String> {
    let name = |e: &String| e.split_once('=').map_or(e.clone(), |(k, _)| k.to_owned());
    let mut out: Vec<String> = base.to_vec();
    for e in over {
        match out.iter_mut().find(|b| name(b) == name(e)) {
            Some(slot) => slot.clone_from(e),
            None => out.push(e.clone()),
        }
    }
    out
}

/// Where the kernel would find `program` in the tree: itself if it holds
/// a `/` (relative to `cwd` if not absolute), else the first `path`
/// directory where it is a file (symlinks followed).
pub fn find_program(tree: &Tree, program: &str, path: &str, cwd: &str) -> Option<String> {
    let is_file = |p: &str| tree.resolve(p.as_bytes()).is_some_and(|id| matches!(tree.inode(id).kind, Kind::File(_)));
    if program.contains('/') {
        let joined = if program.starts_with('/') { program.to_owned() } else { format!("{cwd}/{program}") };
        // Lexically tidy (`./run` in /opt/app is /opt/app/run).
        let parts: Vec<&str> = joined.split('/').filter(|p| !p.is_empty() && *p != ".").collect();
        let abs = format!("/{}", parts.join("/"));
        return is_file(&abs).then_some(abs);
    }
    path.split(':')
        .filter(|d| d.starts_with('/'))
        .map(|d| format!("{}/{program}", d.trim_end_matches('/')))
        .find(|p| is_file(p))
}

/// A user as resolved at build time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedUser {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary groups: those `/etc/group` lists the user's name in
    /// (without the primary group), sorted.
    pub groups: Vec<u32>,
}

/// Resolve a Docker-style `user[:group]` (names or numbers) through an
/// image's `/etc/passwd` and `/etc/group`. A numeric uid need not be in
/// passwd (its primary group is then 0, as Docker does); a name must be.
pub fn resolve_user(spec: &str, passwd: Option<&str>, group: Option<&str>) -> Result<ResolvedUser, String> {
    let (user, grp) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    if user.is_empty() || grp.is_some_and(str::is_empty) {
        return Err(format!("user {spec:?} is not user[:group]"));
    }
    // name:password:uid:gid:...
    let passwd_entries: Vec<(&str, u32, u32)> = passwd
        .unwrap_or("")
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some((*f.first()?, f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?))
        })
        .collect();
    // name:password:gid:member,member
    let group_entries: Vec<(&str, u32, Vec<&str>)> = group
        .unwrap_or("")
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            let members = f.get(3).map(|m| m.split(',').filter(|m| !m.is_empty()).collect()).unwrap_or_default();
            Some((*f.first()?, f.get(2)?.parse().ok()?, members))
        })
        .collect();
    let (name, uid, mut gid) = match user.parse::<u32>() {
        Ok(uid) => {
            let e = passwd_entries.iter().find(|e| e.1 == uid);
            (e.map(|e| e.0), uid, e.map_or(0, |e| e.2))
        }
        Err(_) => {
            let Some(e) = passwd_entries.iter().find(|e| e.0 == user) else {
                return Err(match passwd {
                    None => format!("user {user:?}: the image has no /etc/passwd to look the name up in"),
                    Some(_) => format!("user {user:?} is not in the image's /etc/passwd"),
                });
            };
            (Some(e.0), e.1, e.2)
        }
    };
    if let Some(g) = grp {
        gid = match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => match group_entries.iter().find(|e| e.0 == g) {
                Some(e) => e.1,
                None if group.is_none() => {
                    return Err(format!("group {g:?}: the image has no /etc/group to look the name up in"))
                }
                None => return Err(format!("group {g:?} is not in the image's /etc/group")),
            },
        };
    }
    let mut groups: Vec<u32> = match (name, grp) {
        (Some(n), None) => group_entries.iter().filter(|e| e.2.contains(&n)).map(|e| e.1).collect(),
        _ => Vec::new(),
    };
    groups.retain(|g| *g != gid);
    groups.sort_unstable();
    groups.dedup();
    Ok(ResolvedUser { uid, gid, groups })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n\
                          svc:x:1001:1000::/:/sbin/nologin\n# comment\nbroken\n";
    const GROUP: &str = "root:x:0:\napp:x:1000:\naudio:x:29:app,svc\nvideo:x:44:svc\nwheel:x:10:app\n";

    fn user(spec: &str) -> Result<ResolvedUser, String> {
        resolve_user(spec, Some(PASSWD), Some(GROUP))
    }

    #[test]
    fn users_resolve_by_name_and_number() {
        let r = |uid, gid, groups: &[u32]| Ok(ResolvedUser { uid, gid, groups: groups.to_vec() });
        assert_eq!(user("app"), r(1000, 1000, &[10, 29]));
        assert_eq!(user("svc"), r(1001, 1000, &[29, 44]));
        assert_eq!(user("1000"), r(1000, 1000, &[10, 29]));
        // Not in passwd: a number is fine (group 0), a name is not.
        assert_eq!(user("4242"), r(4242, 0, &[]));
        assert_eq!(user("app:audio"), r(1000, 29, &[]));
        assert_eq!(user("app:7"), r(1000, 7, &[]));
        assert_eq!(user("0:0"), r(0, 0, &[]));
        assert_eq!(user("ghost"), Err("user \"ghost\" is not in the image's /etc/passwd".into()));
        assert_eq!(user("app:ghosts"), Err("group \"ghosts\" is not in the image's /etc/group".into()));
        assert_eq!(
            resolve_user("app", None, None),
            Err("user \"app\": the image has no /etc/passwd to look the name up in".into())
        );
        for bad in ["", ":1", "app:"] {
            assert!(user(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn env_merges_as_docker_does() {
        let base = vec!["PATH=/usr/bin".to_owned(), "LANG=C.UTF-8".to_owned()];
        let over = vec!["PATH=/opt/bin".to_owned(), "DEBUG=1".to_owned()];
        assert_eq!(merge_env(&base, &over), ["PATH=/opt/bin", "LANG=C.UTF-8", "DEBUG=1"]);
        assert_eq!(env_value(base.iter(), "LANG"), Some("C.UTF-8"));
        assert_eq!(env_value(base.iter(), "HOME"), None);
    }

    #[test]
    fn programs_are_found_on_path_through_symlinks() {
        use crate::tree::{FileData, Inode, Meta};
        let d = Meta { mode: 0o755, ..Meta::default() };
        let mut t = Tree::new(d.clone());
        for p in ["usr", "usr/bin", "opt", "opt/app"] {
            t.insert(p.as_bytes(), Inode { meta: d.clone(), kind: Kind::Dir(BTreeMap::new()) }).unwrap_or(0);
        }
        let file = || Inode { meta: d.clone(), kind: Kind::File(FileData::Spool { offset: 0, len: 0 }) };
        t.insert(b"usr/bin/python3.12", file()).unwrap_or(0);
        t.insert(b"usr/bin/python3", Inode { meta: d.clone(), kind: Kind::Symlink(b"python3.12".to_vec()) })
            .unwrap_or(0);
        // Merged /usr: /bin -> usr/bin.
        t.insert(b"bin", Inode { meta: d.clone(), kind: Kind::Symlink(b"usr/bin".to_vec()) }).unwrap_or(0);
        t.insert(b"opt/app/run", file()).unwrap_or(0);
        assert_eq!(find_program(&t, "python3", "/usr/local/bin:/bin", "/"), Some("/bin/python3".into()));
        assert_eq!(find_program(&t, "python3", DEFAULT_PATH, "/"), Some("/usr/bin/python3".into()));
        assert_eq!(find_program(&t, "perl", DEFAULT_PATH, "/"), None);
        assert_eq!(find_program(&t, "./run", DEFAULT_PATH, "/opt/app"), Some("/opt/app/run".into()));
        assert_eq!(find_program(&t, "/opt/app/run", "", "/"), Some("/opt/app/run".into()));
        // A directory is not a program; a dangling link is not either.
        assert_eq!(find_program(&t, "app", "/opt", "/"), None);
        t.insert(b"usr/bin/gone", Inode { meta: d.clone(), kind: Kind::Symlink(b"/nowhere".to_vec()) }).unwrap_or(0);
        assert_eq!(find_program(&t, "gone", "/usr/bin", "/"), None);
        // A symlink loop ends.
        t.insert(b"usr/bin/loop", Inode { meta: d, kind: Kind::Symlink(b"loop".to_vec()) }).unwrap_or(0);
        assert_eq!(find_program(&t, "loop", "/usr/bin", "/"), None);
    }
}

/// Where a container's value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Origin {
    /// The appliance file set it.
    Appliance,
    /// The image config gave it.
    Image,
    /// The image's `Env`, with the appliance file's entries over it.
    ImageAndAppliance,
    /// Neither: cairn's default.
    Default,
}

impl Origin {
    /// How `manifest inspect` names it.
    pub fn describe(self) -> &'static str {
        match self {
            Origin::Appliance => "appliance file",
            Origin::Image => "image config",
            Origin::ImageAndAppliance => "image config + appliance file",
            Origin::Default => "cairn default",
        }
    }
}

/// Where each defaultable value of one container came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ContainerOrigins {
    /// The container.
    pub container: String,
    /// The layer whose image gave defaults (the container's topmost layer
    /// built from an image), if any.
    pub image_layer: Option<String>,
    /// `argv` (image: `Entrypoint` + `Cmd`, `argv[0]` found on `PATH`).
    pub argv: Origin,
    /// `env` (image: `Env`).
    pub env: Origin,
    /// `cwd` (image: `WorkingDir`).
    pub cwd: Origin,
    /// `uid`, `gid` and `groups` (image: `User`).
    pub user: Origin,
}

/// What the appliance file set for a container (`None`: not set).
#[derive(Debug, Clone, Default)]
pub struct Explicit {
    /// `argv`.
    pub argv: Option<Vec<String>>,
    /// `env`.
    pub env: Option<Vec<String>>,
    /// `cwd`.
    pub cwd: Option<String>,
    /// `user` (`name[:group]` or numbers).
    pub user: Option<String>,
    /// `uid` and `gid` (either set).
    pub uid_gid: Option<(u32, u32)>,
    /// `groups`.
    pub groups: Option<Vec<u32>>,
}

/// The values a container runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Effective {
    /// Entrypoint and arguments.
    pub argv: Vec<String>,
    /// Environment.
    pub env: Vec<String>,
    /// Working directory.
    pub cwd: String,
    /// User.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
}

/// Apply an image's defaults (`image`: the layer name and its image) to
/// what the appliance file set, Docker's way: the file's `argv` replaces
/// `Entrypoint + Cmd`, its `env` entries replace the image's of the same
/// name, its `cwd` and `user` (or `uid`/`gid`) replace `WorkingDir` and
/// `User`. Every problem is returned.
pub fn apply_defaults(
    name: &str,
    set: &Explicit,
    image: Option<(&str, &ImageInfo)>,
) -> Result<(Effective, ContainerOrigins), Vec<String>> {
    let mut problems = Vec::new();
    let cfg = image.map(|(_, i)| &i.config);
    let files = image.map(|(_, i)| &i.files);
    let default_env = || vec![format!("PATH={DEFAULT_PATH}")];

    let (argv, argv_o) = match (&set.argv, cfg) {
        (Some(a), _) => (a.clone(), Origin::Appliance),
        (None, Some(cfg)) => {
            let mut argv = cfg.argv();
            match (argv.first().cloned(), files.and_then(|f| f.argv0.clone())) {
                (None, _) => problems.push("argv: not set, and the image config has neither Entrypoint nor Cmd".into()),
                (Some(_), Some(abs)) => argv[0] = abs,
                (Some(p), None) => problems.push(format!(
                    "argv: the image's Entrypoint/Cmd program {p:?} is not a file in the image (looked on its PATH); \
                     set argv"
                )),
            }
            (argv, Origin::Image)
        }
        (None, None) => {
            problems.push("argv: missing (only a container with a layer built from an image may leave it out)".into());
            (Vec::new(), Origin::Default)
        }
    };
    let image_env = cfg.and_then(|c| c.env.clone());
    let (mut env, env_o) = match (&set.env, image_env) {
        (Some(e), Some(base)) => (merge_env(&base, e), Origin::ImageAndAppliance),
        (Some(e), None) => (e.clone(), Origin::Appliance),
        (None, Some(base)) => (base, Origin::Image),
        (None, None) => (default_env(), Origin::Default),
    };
    if env_o == Origin::Image && env_value(env.iter(), "PATH").is_none() {
        // As Docker: an image Env without PATH gets the default one.
        env.insert(0, format!("PATH={DEFAULT_PATH}"));
    }
    let (cwd, cwd_o) = match (&set.cwd, cfg.and_then(|c| c.working_dir.clone()).filter(|w| !w.is_empty())) {
        (Some(c), _) => (c.clone(), Origin::Appliance),
        (None, Some(w)) => (w, Origin::Image),
        (None, None) => ("/".into(), Origin::Default),
    };
    let resolve = |spec: &str, what: &str, problems: &mut Vec<String>| {
        let (passwd, group) = (files.and_then(|f| f.passwd.as_deref()), files.and_then(|f| f.group.as_deref()));
        resolve_user(spec, passwd, group).map_err(|e| problems.push(format!("{what}: {e}"))).ok()
    };
    let (user, user_o) = match (&set.user, set.uid_gid, cfg.and_then(|c| c.user.clone()).filter(|u| !u.is_empty())) {
        (Some(_), Some(_), _) => {
            problems.push("user: give user or uid/gid, not both".into());
            (None, Origin::Appliance)
        }
        (Some(u), None, _) => (resolve(u, "user", &mut problems), Origin::Appliance),
        (None, Some((uid, gid)), _) => (Some(ResolvedUser { uid, gid, groups: Vec::new() }), Origin::Appliance),
        (None, None, Some(u)) => (resolve(&u, "the image's User", &mut problems), Origin::Image),
        (None, None, None) => (Some(ResolvedUser { uid: 0, gid: 0, groups: Vec::new() }), Origin::Default),
    };
    if !problems.is_empty() {
        return Err(problems);
    }
    let user = user.unwrap_or(ResolvedUser { uid: 0, gid: 0, groups: Vec::new() });
    let groups = set.groups.clone().unwrap_or(user.groups);
    let eff = Effective { argv, env, cwd, uid: user.uid, gid: user.gid, groups };
    let origins = ContainerOrigins {
        container: name.to_owned(),
        image_layer: image.map(|(l, _)| l.to_owned()),
        argv: argv_o,
        env: env_o,
        cwd: cwd_o,
        user: user_o,
    };
    Ok((eff, origins))
}
