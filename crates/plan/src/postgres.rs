//! What the planner knows about each Postgres node: its desired and existing instances, and
//! what Patroni reports for it. Patroni decides which instance is the primary; the planner
//! only orders its own steps around that (ADR 016).

use std::collections::{BTreeMap, BTreeSet};

use crate::planner::Key;
use crate::types::{DesiredInstance, InstanceKind, PatroniNode, PlanInput};

/// One node of the database.
#[derive(Default)]
pub(crate) struct Node<'a> {
    /// Its desired instances, in the order they are preferred to take over: the node's
    /// first host, then by instance id.
    pub desired: Vec<&'a DesiredInstance>,
    /// Its instances that exist (a record or a report), on any host.
    pub existing: BTreeSet<Key<'a>>,
    pub patroni: Option<&'a PatroniNode>,
}

/// Where a desired Postgres instance's step goes.
pub(crate) enum Place {
    /// With the node's leader, before the other instances.
    First,
    /// With the replicas.
    Other,
    /// Not now, for this reason.
    Wait(String),
}

impl<'a> Node<'a> {
    /// No instance of it exists: a new node, initialised by its first host's instance.
    pub fn fresh(&self) -> bool {
        self.existing.is_empty()
    }

    /// Some desired instance of it is to run (not every one is stopped).
    pub fn runs(&self) -> bool {
        self.desired.iter().any(|d| !d.stopped)
    }

    /// The instance holding the leader key. A new node has none: keys left from an earlier
    /// node of that name name no instance of this one (they are forgotten first).
    pub fn leader(&self) -> Option<&'a str> {
        if self.fresh() {
            return None;
        }
        self.patroni?.leader.as_deref()
    }

    /// Its leader's Postgres runs, as Patroni last reported.
    pub fn leader_running(&self) -> bool {
        let Some(leader) = self.leader() else {
            return false;
        };
        self.patroni
            .and_then(|p| p.members.get(leader))
            .is_some_and(|m| m.is_running())
    }

    fn initialized(&self) -> bool {
        !self.fresh() && self.patroni.is_some_and(|p| p.initialized)
    }

    /// The desired instance that should take over from the leader now, if one can: a
    /// running replica that has caught up.
    pub fn candidate(&self) -> Option<&'a str> {
        let patroni = self.patroni?;
        self.desired
            .iter()
            .filter(|d| !d.stopped)
            .map(|d| d.instance_id.as_str())
            .find(|id| patroni.can_take_over(id))
    }

    /// Where `d` (one of its desired instances, at `key`) is applied.
    pub fn place(&self, d: &DesiredInstance, key: &Key) -> Place {
        let name = d.kind.node().unwrap_or_default();
        match self.leader() {
            Some(leader) if leader == d.instance_id => Place::First,
            Some(_) => Place::Other,
            None if self.fresh() && d.bootstrap => Place::First,
            None if self.fresh() => Place::Wait(format!(
                "node {name}: {} waits until the node's first instance has initialised it",
                d.instance_id
            )),
            // Without a leader every instance that exists is brought back, so that Patroni
            // can elect one of them.
            None if self.existing.contains(key) => Place::First,
            // A new instance of an initialised node clones once a leader is elected; Patroni
            // never lets it initialise the node again.
            None if self.initialized() => Place::Other,
            None => Place::Wait(format!(
                "node {name}: {} waits until Patroni has initialised the node",
                d.instance_id
            )),
        }
    }

    /// What the node waits for besides the steps planned for it: a leader, and each
    /// desired instance on a reachable host to run under Patroni (and, where Patroni says
    /// so, to stream from the leader).
    pub fn waits(&self, name: &str, reachable: &dyn Fn(&str) -> bool) -> Vec<String> {
        let mut out = Vec::new();
        // A node whose every instance is stopped has no primary on purpose.
        if self.leader().is_none() && !self.fresh() && self.runs() {
            out.push(format!(
                "node {name} has no primary: waiting for Patroni to elect one"
            ));
        }
        for d in &self.desired {
            if !reachable(&d.host_id) || d.waiting || d.stopped {
                continue;
            }
            match self.patroni.and_then(|p| p.members.get(&d.instance_id)) {
                // A replica that runs but does not stream yet (Patroni 4.0 says so) is waited
                // for: a database is available once its replicas stream.
                Some(m) if m.is_streaming_or_running() => {}
                Some(m) => out.push(format!(
                    "postgres instance {} on {}: Patroni reports it {}",
                    d.instance_id,
                    d.host_id,
                    m.shown_state()
                )),
                None => out.push(format!(
                    "postgres instance {} on {}: not registered with Patroni yet",
                    d.instance_id, d.host_id
                )),
            }
        }
        out
    }
}

/// Every Postgres node that is desired, exists or has Patroni keys, by name.
pub(crate) struct Nodes<'a>(pub BTreeMap<&'a str, Node<'a>>);

impl<'a> Nodes<'a> {
    pub fn new(
        input: &'a PlanInput,
        desired: &BTreeMap<Key<'a>, &'a DesiredInstance>,
        existing: &BTreeMap<Key<'a>, &'a InstanceKind>,
    ) -> Self {
        let mut nodes: BTreeMap<&str, Node> = BTreeMap::new();
        for d in desired.values() {
            if let Some(node) = d.kind.node() {
                nodes.entry(node).or_default().desired.push(d);
            }
        }
        for (key, kind) in existing {
            if let Some(node) = kind.node() {
                nodes.entry(node).or_default().existing.insert(*key);
            }
        }
        for (name, patroni) in &input.patroni {
            nodes.entry(name).or_default().patroni = Some(patroni);
        }
        for node in nodes.values_mut() {
            node.desired.sort_by(|a, b| {
                (!a.bootstrap, &a.instance_id, &a.host_id).cmp(&(
                    !b.bootstrap,
                    &b.instance_id,
                    &b.host_id,
                ))
            });
        }
        Nodes(nodes)
    }

    /// The node of that name; an empty one if the planner knows nothing of it.
    pub fn get(&self, name: &str) -> &Node<'a> {
        self.0.get(name).unwrap_or(&NO_NODE)
    }
}

static NO_NODE: Node<'static> = Node {
    desired: Vec::new(),
    existing: BTreeSet::new(),
    patroni: None,
};
