//! The provenance record `manifest build` writes beside the manifest:
//! an in-toto Statement (v1) with a SLSA Provenance (v1) predicate.
//!
//! Why in-toto/SLSA rather than SPDX: the question a supply-chain review
//! asks of a device build is "which inputs, by digest, made these outputs",
//! and that is exactly an in-toto statement's shape (subjects: the outputs
//! by digest; resolvedDependencies: the inputs by digest), which cosign,
//! in-toto and slsa-verifier consume. SPDX describes the packages inside an
//! artifact, which cairn does not know (the image's own SBOM does).
//!
//! Subjects: the manifest (the digest of its signed payload, the same before
//! and after `manifest sign`) and every layer (the device's layer digest).
//! Dependencies: the appliance file and every layer source; for an image,
//! its reference, manifest and config digests, and each image layer's blob
//! digest, diff_id, media type and annotations. Where each container's argv,
//! env, cwd and user came from (image defaults) is in
//! `buildDefinition.internalParameters.containers`, which `manifest inspect`
//! shows as comments.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use cairn_build::appliance::{Appliance, LayerRef};
use cairn_build::assemble::BuiltAppliance;
use cairn_build::import::config::Origin;
use cairn_format::digest::Digest;
use serde_json::{json, Value};

/// Where the record of the manifest at `manifest` goes.
pub fn path_for(manifest: &Path) -> PathBuf {
    let mut s = manifest.as_os_str().to_owned();
    s.push(".intoto.json");
    PathBuf::from(s)
}

fn sha(d: &str) -> Value {
    json!({ "sha256": d.strip_prefix("sha256:").unwrap_or(d) })
}

/// The statement for `app`, built from the appliance file at `appliance`,
/// whose manifest's signed payload is `payload`.
pub fn statement(appliance: &Path, app: &BuiltAppliance, payload: &[u8]) -> Result<Value> {
    let text = std::fs::read(appliance).with_context(|| format!("cannot read {}", appliance.display()))?;
    let file = Appliance::load(appliance)?;
    let sources: BTreeMap<&str, String> = file
        .layers
        .iter()
        .filter_map(|l| match l.reference() {
            Ok(LayerRef::Source(s)) => Some((l.name.as_str(), s)),
            Ok(LayerRef::File(f)) => Some((l.name.as_str(), format!("file:{f}"))),
            _ => None,
        })
        .collect();
    let mut subjects = vec![json!({
        "name": "manifest",
        "digest": { "sha256": Digest::of(payload).to_string() },
        "annotations": { "cairn.appliance": app.manifest.appliance.as_str(), "cairn.version": app.manifest.version },
    })];
    let mut deps = vec![json!({
        "name": "appliance",
        "uri": appliance.display().to_string(),
        "digest": { "sha256": Digest::of(&text).to_string() },
    })];
    let mut layers = Vec::new();
    for l in &app.layers {
        subjects.push(json!({ "name": format!("layer/{}", l.name), "digest": { "sha256": l.digest.to_string() } }));
        let image = app.images.get(&l.name);
        let source = sources.get(l.name.as_str()).cloned();
        if let Some(src) = &source {
            let mut d = json!({ "name": format!("layer/{}/source", l.name), "uri": src });
            if let Some(i) = image {
                if let Some(m) = i.manifest_digest.as_deref().or(i.config_digest.as_deref()) {
                    d["digest"] = sha(m);
                }
                if !i.annotations.is_empty() {
                    d["annotations"] = json!(i.annotations);
                }
            }
            deps.push(d);
        }
        for (n, il) in image.iter().flat_map(|i| i.layers.iter()).enumerate() {
            let mut annotations = il.annotations.clone();
            annotations.insert("cairn.diff_id".into(), il.diff_id.clone());
            if let Some(m) = &il.media_type {
                annotations.insert("cairn.media_type".into(), m.clone());
            }
            deps.push(json!({
                "name": format!("layer/{}/image-layer/{}", l.name, n + 1),
                "digest": sha(il.digest.as_deref().unwrap_or(&il.diff_id)),
                "annotations": annotations,
            }));
        }
        layers.push(json!({
            "name": l.name,
            "digest": format!("sha256:{}", l.digest),
            "size": l.size,
            "source": source,
            "image": image,
        }));
    }
    Ok(json!({
        "_type": "https://in-toto.io/Statement/v1",
        "subject": subjects,
        "predicateType": "https://slsa.dev/provenance/v1",
        "predicate": {
            "buildDefinition": {
                "buildType": "urn:cairn:manifest-build:v1",
                "externalParameters": { "appliance": appliance.display().to_string() },
                "internalParameters": { "layers": layers, "containers": app.origins },
                "resolvedDependencies": deps,
            },
            "runDetails": {
                "builder": { "id": "urn:cairn:cli", "version": { "cairn": env!("CARGO_PKG_VERSION") } },
            },
        },
    }))
}

/// The origin notes of a manifest's containers from the record beside
/// `manifest`, if there is one for this payload: container name to
/// (key, note).
pub fn notes(manifest: &Path, payload: &[u8]) -> Option<BTreeMap<String, Vec<(&'static str, String)>>> {
    let mut out = BTreeMap::new();
    for o in &origins(manifest, payload)? {
        let name = o["container"].as_str()?.to_owned();
        let layer = o["image_layer"].as_str().map(|l| format!(" (layer {l})")).unwrap_or_default();
        let note = |key: &str| -> Option<String> {
            let origin: Origin = serde_json::from_value(o[key].clone()).ok()?;
            let from_image = matches!(origin, Origin::Image | Origin::ImageAndAppliance);
            Some(format!("from {}{}", origin.describe(), if from_image { layer.as_str() } else { "" }))
        };
        let user = note("user")?;
        out.insert(
            name,
            vec![
                ("argv", note("argv")?),
                ("env", note("env")?),
                ("cwd", note("cwd")?),
                ("uid", user.clone()),
                ("gid", user.clone()),
                ("groups", user),
            ],
        );
    }
    Some(out)
}

/// The containers' value origins the record beside `manifest` holds, if
/// it is the record of this payload: `[{container, image_layer, argv, env,
/// cwd, user}]`, each origin `appliance`, `image`, `image-and-appliance`
/// or `default`.
pub fn origins(manifest: &Path, payload: &[u8]) -> Option<Vec<Value>> {
    let v: Value = serde_json::from_slice(&std::fs::read(path_for(manifest)).ok()?).ok()?;
    let want = Digest::of(payload).to_string();
    let subject = v["subject"].as_array()?.iter().find(|s| s["name"] == "manifest")?;
    if subject["digest"]["sha256"].as_str()? != want {
        return None;
    }
    v["predicate"]["buildDefinition"]["internalParameters"]["containers"].as_array().cloned()
}
