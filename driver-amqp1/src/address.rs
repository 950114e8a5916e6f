//! oslo's AMQP 1.0 addressing (`amqp1_driver/addressing.py`) and how the addresses map onto
//! link addresses for the peer actually connected.

use oslo_core::Target;

use crate::config::{AddressingMode, Amqp1Config};

/// Which address syntax is in use once the peer is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressStyle {
    /// `unicast.<exchange>.<topic>` (qpidd; also the names used on RabbitMQ).
    Legacy,
    /// `openstack.org/om/rpc/anycast/<exchange>/<topic>` (qpid-dispatch-router).
    Routable,
}

/// The kind of peer, from its Open `product` property.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// RabbitMQ 3.x `rabbitmq_amqp1_0`: legacy names become queue names, fanout and replies
    /// go through private queues bound to `amq.direct` (see the crate docs).
    RabbitMq,
    /// Any other AMQP 1.0 peer (qpidd, qpid-dispatch-router, ...): addresses as oslo sends
    /// them, dynamic reply sources, multicast addresses for fanout.
    Generic,
}

impl Peer {
    /// Classify a peer by its `product`.
    pub fn from_product(product: Option<&str>) -> Peer {
        match product {
            Some(p) if p.eq_ignore_ascii_case("rabbitmq") => Peer::RabbitMq,
            _ => Peer::Generic,
        }
    }
}

/// oslo's `AddresserFactory`: `legacy`/`routable` as configured; `dynamic` picks legacy for
/// qpidd (`qpid-cpp`) or a peer that does not say, routable for anything else. RabbitMQ 3.x
/// rejects slash-separated addresses, so it always gets legacy names.
pub fn style_for(mode: AddressingMode, product: Option<&str>) -> AddressStyle {
    if Peer::from_product(product) == Peer::RabbitMq {
        if mode == AddressingMode::Routable {
            tracing::warn!("addressing_mode=routable is not usable with RabbitMQ 3.x; using legacy addresses");
        }
        return AddressStyle::Legacy;
    }
    match mode {
        AddressingMode::Legacy => AddressStyle::Legacy,
        AddressingMode::Routable => AddressStyle::Routable,
        AddressingMode::Dynamic => match product {
            None | Some("qpid-cpp") => AddressStyle::Legacy,
            Some(_) => AddressStyle::Routable,
        },
    }
}

/// Builds oslo's addresses for one transport.
#[derive(Debug, Clone)]
pub struct Addresser {
    style: AddressStyle,
    control_exchange: String,
    vhost: Option<String>,
    server_request_prefix: String,
    broadcast_prefix: String,
    group_request_prefix: String,
    rpc_prefix: String,
    notify_prefix: String,
    multicast: String,
    unicast: String,
    anycast: String,
    default_rpc_exchange: Option<String>,
    default_notification_exchange: Option<String>,
}

impl Addresser {
    /// An addresser for `style`; `vhost` goes into addresses only with `pseudo_vhost`.
    pub fn new(style: AddressStyle, config: &Amqp1Config, control_exchange: &str, vhost: Option<&str>) -> Self {
        Addresser {
            style,
            control_exchange: control_exchange.to_string(),
            vhost: if config.pseudo_vhost {
                vhost.filter(|v| !v.is_empty()).map(str::to_string)
            } else {
                None
            },
            server_request_prefix: config.server_request_prefix.clone(),
            broadcast_prefix: config.broadcast_prefix.clone(),
            group_request_prefix: config.group_request_prefix.clone(),
            rpc_prefix: config.rpc_address_prefix.clone(),
            notify_prefix: config.notify_address_prefix.clone(),
            multicast: config.multicast_address.clone(),
            unicast: config.unicast_address.clone(),
            anycast: config.anycast_address.clone(),
            default_rpc_exchange: config.default_rpc_exchange.clone(),
            default_notification_exchange: config.default_notification_exchange.clone(),
        }
    }

    /// The style in use.
    pub fn style(&self) -> AddressStyle {
        self.style
    }

    fn legacy(&self, prefix: &str, rest: &[&str]) -> String {
        let mut parts: Vec<&str> = vec![prefix];
        if let Some(vhost) = &self.vhost {
            parts.push(vhost);
        }
        parts.extend_from_slice(rest);
        parts.into_iter().filter(|p| !p.is_empty()).collect::<Vec<_>>().join(".")
    }

    fn routable(&self, prefix: &str, kind: &str, rest: &[&str]) -> String {
        let mut parts: Vec<&str> = vec![prefix, kind];
        if let Some(vhost) = &self.vhost {
            parts.push(vhost);
        }
        parts.extend_from_slice(rest);
        parts.into_iter().filter(|p| !p.is_empty()).collect::<Vec<_>>().join("/")
    }

    fn legacy_exchange<'a>(&'a self, target: &'a Target) -> &'a str {
        target.exchange.as_deref().unwrap_or(&self.control_exchange)
    }

    fn rpc_exchange<'a>(&'a self, target: &'a Target) -> &'a str {
        target
            .exchange
            .as_deref()
            .or(self.default_rpc_exchange.as_deref())
            .or(Some(self.control_exchange.as_str()).filter(|e| !e.is_empty()))
            .unwrap_or("rpc")
    }

    fn notify_exchange<'a>(&'a self, target: &'a Target) -> &'a str {
        target
            .exchange
            .as_deref()
            .or(self.default_notification_exchange.as_deref())
            .or(Some(self.control_exchange.as_str()).filter(|e| !e.is_empty()))
            .unwrap_or("notify")
    }

    /// RPC to any server of the topic.
    pub fn anycast(&self, target: &Target) -> String {
        match self.style {
            AddressStyle::Legacy => self.legacy(
                &self.group_request_prefix,
                &[self.legacy_exchange(target), target.topic.as_deref().unwrap_or_default()],
            ),
            AddressStyle::Routable => self.routable(
                &self.rpc_prefix,
                &self.anycast,
                &[self.rpc_exchange(target), target.topic.as_deref().unwrap_or_default()],
            ),
        }
    }

    /// RPC to one server (`target.server` must be set).
    pub fn unicast(&self, target: &Target) -> String {
        let server = target.server.as_deref().unwrap_or_default();
        match self.style {
            AddressStyle::Legacy => self.legacy(
                &self.server_request_prefix,
                &[self.legacy_exchange(target), target.topic.as_deref().unwrap_or_default(), server],
            ),
            AddressStyle::Routable => self.routable(
                &self.rpc_prefix,
                &self.unicast,
                &[self.rpc_exchange(target), target.topic.as_deref().unwrap_or_default(), server],
            ),
        }
    }

    /// RPC to every server of the topic.
    pub fn multicast(&self, target: &Target) -> String {
        match self.style {
            AddressStyle::Legacy => self.legacy(
                &self.broadcast_prefix,
                &[self.legacy_exchange(target), target.topic.as_deref().unwrap_or_default(), "all"],
            ),
            AddressStyle::Routable => self.routable(
                &self.rpc_prefix,
                &self.multicast,
                &[self.rpc_exchange(target), target.topic.as_deref().unwrap_or_default()],
            ),
        }
    }

    /// A notification; `target.topic` is `<topic>.<priority>`.
    pub fn notify(&self, target: &Target) -> String {
        match self.style {
            AddressStyle::Legacy => self.legacy(
                &self.group_request_prefix,
                &[self.legacy_exchange(target), target.topic.as_deref().unwrap_or_default()],
            ),
            AddressStyle::Routable => self.routable(
                &self.notify_prefix,
                &self.anycast,
                &[self.notify_exchange(target), target.topic.as_deref().unwrap_or_default()],
            ),
        }
    }

    /// The address a send to `target` goes to (fanout, server, or topic).
    pub fn for_send(&self, target: &Target) -> String {
        if target.fanout {
            self.multicast(target)
        } else if target.server.is_some() {
            self.unicast(target)
        } else {
            self.anycast(target)
        }
    }
}

/// Link address for sending to a shared address (topic, server, notification queue).
pub(crate) fn rabbit_queue_address(name: &str) -> String {
    format!("/queue/{name}")
}

/// Link address for sending to a private queue or a fanout binding on RabbitMQ.
pub(crate) fn rabbit_direct_address(key: &str) -> String {
    format!("/exchange/{}/{key}", crate::rabbit_admin::EXCHANGE)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> Target {
        Target::new("compute").with_server("host-1")
    }

    #[test]
    fn legacy_addresses_are_oslos() {
        let c = Amqp1Config::default();
        let a = Addresser::new(AddressStyle::Legacy, &c, "openstack", None);
        assert_eq!(a.anycast(&target()), "unicast.openstack.compute");
        assert_eq!(a.unicast(&target()), "exclusive.openstack.compute.host-1");
        assert_eq!(a.multicast(&target()), "broadcast.openstack.compute.all");
        assert_eq!(a.notify(&Target::new("notifications.info")), "unicast.openstack.notifications.info");
        let v = Addresser::new(AddressStyle::Legacy, &c, "openstack", Some("nova"));
        assert_eq!(v.anycast(&target().with_exchange("nova-ex")), "unicast.nova.nova-ex.compute");
    }

    #[test]
    fn routable_addresses_are_oslos() {
        let c = Amqp1Config::default();
        let a = Addresser::new(AddressStyle::Routable, &c, "openstack", Some("vh"));
        assert_eq!(a.anycast(&target()), "openstack.org/om/rpc/anycast/vh/openstack/compute");
        assert_eq!(a.unicast(&target()), "openstack.org/om/rpc/unicast/vh/openstack/compute/host-1");
        assert_eq!(a.multicast(&target()), "openstack.org/om/rpc/multicast/vh/openstack/compute");
        assert_eq!(
            a.notify(&Target::new("n.info")),
            "openstack.org/om/notify/anycast/vh/openstack/n.info"
        );
        let c = Amqp1Config {
            pseudo_vhost: false,
            default_rpc_exchange: Some("rpcx".into()),
            ..Amqp1Config::default()
        };
        let a = Addresser::new(AddressStyle::Routable, &c, "", Some("vh"));
        assert_eq!(a.anycast(&target()), "openstack.org/om/rpc/anycast/rpcx/compute");
        assert_eq!(a.notify(&Target::new("n.info")), "openstack.org/om/notify/anycast/notify/n.info");
    }

    #[test]
    fn dynamic_mode_follows_the_peer() {
        assert_eq!(style_for(AddressingMode::Dynamic, None), AddressStyle::Legacy);
        assert_eq!(style_for(AddressingMode::Dynamic, Some("qpid-cpp")), AddressStyle::Legacy);
        assert_eq!(
            style_for(AddressingMode::Dynamic, Some("qpid-dispatch-router")),
            AddressStyle::Routable
        );
        assert_eq!(style_for(AddressingMode::Dynamic, Some("RabbitMQ")), AddressStyle::Legacy);
        assert_eq!(style_for(AddressingMode::Routable, Some("RabbitMQ")), AddressStyle::Legacy);
        assert_eq!(
            style_for(AddressingMode::Legacy, Some("qpid-dispatch-router")),
            AddressStyle::Legacy
        );
    }
}
