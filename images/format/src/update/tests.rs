use super::*;
use crate::bootstate::BootState;

fn d(n: u8) -> Digest {
    Digest([n; 32])
}

fn factory(layers: &[u8]) -> BootState {
    let map = layers.iter().zip(1u8..).map(|(l, p)| LayerSlot { digest: d(*l), partition: p }).collect();
    BootState::factory(map)
}

fn parts(n: u8, bytes: u64) -> Vec<Partition> {
    (1..=n).map(|number| Partition { number, bytes }).collect()
}

fn carried(ls: &[u8]) -> Vec<Needed> {
    ls.iter().map(|l| Needed { digest: d(*l), carried: Some(1000) }).collect()
}

/// Factory layers 1,2,3 on partitions 1-3 of 6; install 1,2,4 (4 new).
fn staged() -> (BootState, LayerPlan) {
    let s = factory(&[1, 2, 3]);
    let plan = plan_layers(&s, &[d(1), d(2), d(3)], &carried(&[1, 2, 4]), &parts(6, 4096)).unwrap();
    let s = claim(&s, &plan).unwrap();
    let s = stage(&s, &[d(1), d(2), d(3)], &plan, 3, None).unwrap();
    (s, plan)
}

#[test]
fn a_factory_device_boots_its_committed_slot_and_writes_nothing() {
    let p = plan_boot(&factory(&[1]), None);
    assert_eq!(p, BootPlan { slot: Slot::A, kind: BootKind::Committed, write: None });
    assert_eq!(plan_boot(&factory(&[1]), Some(Slot::B)).slot, Slot::A, "the entry matters only to a trial");
}

#[test]
fn an_install_reuses_what_the_device_holds_and_writes_only_free_partitions() {
    let (s, plan) = staged();
    assert_eq!(plan.reuse, [LayerSlot { digest: d(1), partition: 1 }, LayerSlot { digest: d(2), partition: 2 }]);
    assert_eq!(plan.write, [LayerSlot { digest: d(4), partition: 4 }], "the first empty partition");
    assert_eq!(s.status, [SlotStatus::Good, SlotStatus::Ready]);
    assert_eq!(s.trial, Some(Trial { slot: Slot::B, tries_left: 3, boot_entry: None }));
    assert_eq!(s.partition_of(&d(3)), Some(3), "the committed manifest's layers stay mapped");
    assert_eq!(s.partition_of(&d(4)), Some(4));
}

#[test]
fn a_trial_spends_its_try_before_it_boots_then_commits_and_raises_the_floor() {
    let (s, _) = staged();
    let p = plan_boot(&s, None);
    assert_eq!((p.slot, p.kind), (Slot::B, BootKind::Trial { tries_left: 2 }));
    let spent = p.write.expect("the try is written before anything mounts");
    assert_eq!(spent.trial.map(|t| t.tries_left), Some(2));
    assert_eq!(spent.rollback_floor, 0, "no floor change on a trial boot");
    let c = commit(&spent, Slot::B, 7, 5).unwrap();
    assert_eq!((c.committed, c.trial, c.status, c.rollback_floor), (Slot::B, None, [SlotStatus::Good; 2], 5));
    assert_eq!(plan_boot(&c, None), BootPlan { slot: Slot::B, kind: BootKind::Committed, write: None });
    let mut higher = c.clone();
    higher.rollback_floor = 9;
    higher.trial = Some(Trial { slot: Slot::A, tries_left: 1, boot_entry: None });
    assert_eq!(commit(&higher, Slot::A, 8, 3).map(|s| s.rollback_floor), Ok(9), "the floor never falls");
}

#[test]
fn commit_refuses_a_slot_not_on_trial_and_a_floor_above_its_version() {
    let (s, _) = staged();
    assert_eq!(commit(&s, Slot::A, 7, 7), Err(CommitError::NotOnTrial(Slot::A)));
    assert_eq!(commit(&factory(&[1]), Slot::B, 7, 7), Err(CommitError::NotOnTrial(Slot::B)));
    assert_eq!(commit(&s, Slot::B, 7, 8), Err(CommitError::FloorAboveVersion { floor: 8, version: 7 }));
}

#[test]
fn a_trial_out_of_tries_boots_the_committed_slot_and_marks_its_own_bad() {
    let (mut s, _) = staged();
    for left in [2, 1, 0] {
        let p = plan_boot(&s, None);
        assert_eq!(p.kind, BootKind::Trial { tries_left: left });
        s = p.write.unwrap();
    }
    let p = plan_boot(&s, None);
    assert_eq!(p.slot, Slot::A);
    assert_eq!(p.kind, BootKind::TrialEnded { slot: Slot::B, reason: TrialFailure::OutOfTries });
    let ended = p.write.unwrap();
    assert_eq!((ended.trial, ended.status), (None, [SlotStatus::Good, SlotStatus::Bad]));
    assert_eq!((ended.rollback_floor, ended.layer_slots.clone()), (s.rollback_floor, s.layer_slots.clone()));
    assert_eq!(plan_boot(&ended, None).kind, BootKind::Committed, "a bad slot never boots again");
}

#[test]
fn a_loader_that_fell_back_from_the_new_boot_entry_ends_the_trial() {
    let (s, plan) = staged();
    let mut with_entry = stage(&s, &[d(1), d(2), d(3)], &plan, 3, Some(Slot::B)).unwrap();
    with_entry.trial = Some(Trial { slot: Slot::B, tries_left: 2, boot_entry: Some(Slot::B) });
    let p = plan_boot(&with_entry, Some(Slot::A));
    assert_eq!(
        p.kind,
        BootKind::TrialEnded { slot: Slot::B, reason: TrialFailure::LoaderFellBack { booted: Slot::A } }
    );
    assert_eq!(p.slot, Slot::A);
    assert_eq!(plan_boot(&with_entry, Some(Slot::B)).kind, BootKind::Trial { tries_left: 1 });
    assert_eq!(plan_boot(&with_entry, None).kind, BootKind::Trial { tries_left: 1 }, "no loader to ask");
    assert_eq!(plan_boot(&s, Some(Slot::A)).kind, BootKind::Trial { tries_left: 2 }, "no entry was written");
}

#[test]
fn the_trial_entry_is_its_own_letter_not_the_manifest_slot() {
    // Manifest b committed from entry a (an earlier manifest-only update);
    // the next install targets manifest a but writes its image into entry b.
    let (s, plan) = staged();
    let with_entry = stage(&s, &[d(1), d(2), d(3)], &plan, 3, Some(Slot::A)).unwrap();
    assert_eq!(with_entry.trial.map(|t| (t.slot, t.boot_entry)), Some((Slot::B, Some(Slot::A))));
    assert_eq!(plan_boot(&with_entry, Some(Slot::A)).kind, BootKind::Trial { tries_left: 2 });
    assert_eq!(
        plan_boot(&with_entry, Some(Slot::B)).kind,
        BootKind::TrialEnded { slot: Slot::B, reason: TrialFailure::LoaderFellBack { booted: Slot::B } }
    );
}

#[test]
fn a_boot_image_goes_only_into_the_entry_not_booted_and_only_beside_a_blessed_one() {
    use crate::bootentry::Entry;
    assert_eq!(boot_entry_target(Some(Entry::blessed(Slot::A))), Ok(Slot::B));
    assert_eq!(boot_entry_target(Some(Entry::blessed(Slot::B))), Ok(Slot::A));
    assert_eq!(boot_entry_target(None), Err(InstallRefusal::NoBootEntry));
    assert_eq!(boot_entry_target(Some(Entry::trial(Slot::B, 2))), Err(InstallRefusal::BootEntryUnproven(Slot::B)));
    let bad = Entry { slot: Slot::A, counter: Some(crate::bootentry::Counter { left: 0, done: 3 }) };
    assert_eq!(boot_entry_target(Some(bad)), Err(InstallRefusal::BootEntryUnproven(Slot::A)));
    assert_eq!(InstallRefusal::BootEntryUnproven(Slot::A).name(), "boot-entry-unproven");
}

#[test]
fn an_image_staged_but_not_yet_named_is_finished_not_failed() {
    let (s, plan) = staged();
    let with_entry = stage(&s, &[d(1), d(2), d(3)], &plan, 3, Some(Slot::B)).unwrap();
    let pending_b = |e: Slot| e == Slot::B;
    assert_eq!(entry_to_finish(&with_entry, Some(Slot::A), pending_b), Some(Slot::B));
    assert_eq!(entry_to_finish(&with_entry, None, pending_b), Some(Slot::B), "no loader to ask");
    assert_eq!(entry_to_finish(&with_entry, Some(Slot::A), |_| false), None, "named already: the loader fell back");
    assert_eq!(entry_to_finish(&with_entry, Some(Slot::B), pending_b), None, "the loader started it");
    let without = stage(&s, &[d(1), d(2), d(3)], &plan, 3, None).unwrap();
    assert_eq!(entry_to_finish(&without, Some(Slot::A), pending_b), None, "no image in this trial");
    assert_eq!(entry_to_finish(&s, Some(Slot::A), pending_b), None, "no trial");
}

#[test]
fn a_trial_of_a_slot_that_is_not_ready_never_boots() {
    let (mut s, _) = staged();
    for bad in [SlotStatus::Installing, SlotStatus::Bad, SlotStatus::Empty, SlotStatus::Good] {
        s.set_status(Slot::B, bad);
        let p = plan_boot(&s, None);
        assert_eq!((p.slot, p.kind), (Slot::A, BootKind::TrialEnded { slot: Slot::B, reason: TrialFailure::Refused }));
    }
    let mut on_committed = factory(&[1]);
    on_committed.trial = Some(Trial { slot: Slot::A, tries_left: 3, boot_entry: None });
    let p = plan_boot(&on_committed, None);
    assert_eq!(p.slot, Slot::A);
    assert_eq!(
        p.write.map(|w| (w.trial, w.status[0])),
        Some((None, SlotStatus::Good)),
        "the committed slot stays good"
    );
}

#[test]
fn installs_are_refused_during_a_trial_below_the_floor_and_for_old_versions() {
    let (s, plan) = staged();
    assert_eq!(check_version(&s, 9, 1), Err(InstallRefusal::TrialPending(Slot::B)));
    assert_eq!(claim(&s, &plan), Err(InstallRefusal::TrialPending(Slot::B)));
    let mut f = factory(&[1]);
    f.rollback_floor = 5;
    assert_eq!(check_version(&f, 4, 3), Err(InstallRefusal::BelowFloor { version: 4, floor: 5 }));
    assert_eq!(check_version(&f, 6, 6), Err(InstallRefusal::NotNewer { version: 6, committed: 6 }));
    assert_eq!(check_version(&f, 7, 6), Ok(()));
}

#[test]
fn the_committed_manifests_partitions_are_never_planned_for_writing() {
    let s = factory(&[1, 2, 3]);
    // Three new layers and only three partitions the committed one does not use.
    let plan = plan_layers(&s, &[d(1), d(2), d(3)], &carried(&[7, 8, 9]), &parts(6, 4096)).unwrap();
    assert_eq!(plan.write.iter().map(|w| w.partition).collect::<Vec<_>>(), [4, 5, 6]);
    let four = plan_layers(&s, &[d(1), d(2), d(3)], &carried(&[6, 7, 8, 9]), &parts(6, 4096));
    assert_eq!(four, Err(InstallRefusal::NoFreePartition { digest: d(9), bytes: 1000 }));
    let big = [Needed { digest: d(7), carried: Some(5000) }];
    assert_eq!(
        plan_layers(&s, &[d(1)], &big, &parts(6, 4096)),
        Err(InstallRefusal::NoFreePartition { digest: d(7), bytes: 5000 })
    );
    let thin = [Needed { digest: d(7), carried: None }];
    assert_eq!(plan_layers(&s, &[d(1)], &thin, &parts(6, 4096)), Err(InstallRefusal::MissingLayer(d(7))));
}

#[test]
fn a_layer_listed_twice_is_planned_once_and_stale_partitions_are_used_after_empty_ones() {
    // Partition 4 holds layer 5 of the old slot B; 5 and 6 are empty.
    let mut s = factory(&[1]);
    s.layer_slots.push(LayerSlot { digest: d(5), partition: 4 }).unwrap();
    let plan = plan_layers(&s, &[d(1)], &carried(&[2, 2, 3, 4]), &parts(6, 4096)).unwrap();
    assert_eq!(
        plan.write.iter().map(|w| (w.digest, w.partition)).collect::<Vec<_>>(),
        [(d(2), 2), (d(3), 3), (d(4), 5)]
    );
    // A smaller partition that fits is preferred over a larger one.
    let sized = [Partition { number: 2, bytes: 9000 }, Partition { number: 3, bytes: 1000 }];
    let plan = plan_layers(&factory(&[1]), &[d(1)], &carried(&[2]), &sized).unwrap();
    assert_eq!(plan.write, [LayerSlot { digest: d(2), partition: 3 }]);
    // The old slot's layer the new manifest keeps is reused, not rewritten.
    let plan = plan_layers(&s, &[d(1)], &carried(&[5]), &parts(6, 4096)).unwrap();
    assert_eq!((plan.reuse.len(), plan.write.len()), (1, 0));
}

#[test]
fn claim_forgets_every_partition_it_will_write_before_writing_it() {
    let mut s = factory(&[1]);
    s.layer_slots.push(LayerSlot { digest: d(5), partition: 2 }).unwrap();
    s.set_status(Slot::B, SlotStatus::Good);
    let plan = LayerPlan { reuse: Vec::new(), write: vec![LayerSlot { digest: d(6), partition: 2 }] };
    let c = claim(&s, &plan).unwrap();
    assert_eq!(c.partition_of(&d(5)), None);
    assert_eq!(c.partition_of(&d(1)), Some(1));
    assert_eq!(c.status, [SlotStatus::Good, SlotStatus::Installing]);
    assert_eq!(plan_boot(&c, None).slot, Slot::A, "an installing slot never boots");
}

/// A tiny deterministic generator for the sequence test.
struct Rng(u64);
impl Rng {
    fn next(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Random sequences of installs, boots, commits and failures keep every
/// invariant of the module documentation.
#[test]
fn every_sequence_of_transitions_keeps_the_invariants() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for _ in 0..300 {
        let mut s = factory(&[1, 2]);
        let mut manifests = [vec![d(1), d(2)], Vec::new()];
        let mut versions = [1u64, 0];
        let mut next_layer = 10u8;
        for _ in 0..40 {
            let committed_ix = if s.committed == Slot::A { 0 } else { 1 };
            let before = s.clone();
            match rng.next(4) {
                0 => {
                    // An install of a manifest sharing one layer with the committed one.
                    let v = versions[committed_ix] + 1 + rng.next(2);
                    if check_version(&s, v, versions[committed_ix]).is_err() {
                        assert!(s.trial.is_some(), "only a pending trial refuses a newer version");
                        continue;
                    }
                    let keep = manifests[committed_ix].first().copied();
                    let new: Vec<Digest> = keep.into_iter().chain([d(next_layer)]).collect();
                    next_layer = next_layer.wrapping_add(1).max(10);
                    let needed: Vec<Needed> = new.iter().map(|n| Needed { digest: *n, carried: Some(100) }).collect();
                    let Ok(plan) = plan_layers(&s, &manifests[committed_ix], &needed, &parts(6, 4096)) else {
                        continue;
                    };
                    for w in &plan.write {
                        let p = manifests[committed_ix].iter().filter_map(|l| s.partition_of(l));
                        assert!(!p.collect::<Vec<_>>().contains(&w.partition), "a committed partition planned");
                    }
                    let claimed = claim(&s, &plan).unwrap();
                    assert_eq!(plan_boot(&claimed, None).slot, s.committed);
                    s = stage(&claimed, &manifests[committed_ix], &plan, 1 + rng.next(3) as u8, None).unwrap();
                    manifests[1 - committed_ix] = new;
                    versions[1 - committed_ix] = v;
                }
                1 => {
                    let p = plan_boot(&s, None);
                    match p.kind {
                        BootKind::Committed => assert!(p.write.is_none() && p.slot == s.committed),
                        BootKind::Trial { .. } => {
                            assert_eq!(s.status_of(p.slot), SlotStatus::Ready);
                            assert_ne!(p.slot, s.committed);
                        }
                        BootKind::TrialEnded { .. } => assert_eq!(p.slot, s.committed),
                    }
                    if let Some(w) = p.write {
                        s = w;
                    }
                }
                2 => {
                    if let Some(t) = s.trial {
                        let ix = if t.slot == Slot::A { 0 } else { 1 };
                        s = commit(&s, t.slot, versions[ix], versions[ix]).unwrap();
                        assert!(s.rollback_floor >= before.rollback_floor);
                    }
                }
                _ => s = fail_trial(&s),
            }
            assert_eq!(s.status_of(s.committed), SlotStatus::Good, "the committed slot is always good");
            assert!(s.trial.is_none_or(|t| t.slot != s.committed), "the committed slot never has tries");
            if s.committed == before.committed {
                assert_eq!(s.rollback_floor, before.rollback_floor, "the floor rises only at commit");
            }
            let committed_ix = if s.committed == Slot::A { 0 } else { 1 };
            for l in &manifests[committed_ix] {
                assert!(s.partition_of(l).is_some(), "a committed layer lost its place");
            }
        }
    }
}
