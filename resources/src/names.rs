//! Well-known names: annotations, labels, classes and controller names that drawbridge reads or writes.
//!
//! Everything a user types into a manifest to talk to drawbridge is spelled here once, so the three
//! components and the docs agree.

/// `spec.loadBalancerClass` value handled by lb-controller. Class-less Services are handled too
/// (MetalLB behaviour), unless the controller is told otherwise.
pub const LOAD_BALANCER_CLASS: &str = "drawbridge.dev/lb";

/// Service annotation: comma-separated list of requested external IPs (at most one per family).
/// Same role as MetalLB's `metallb.io/loadBalancerIPs`; preferred over the deprecated
/// `spec.loadBalancerIP`.
pub const ANNOTATION_LOAD_BALANCER_IPS: &str = "drawbridge.dev/load-balancer-ips";

/// Service annotation: the name of the `IPAddressPool` to allocate from.
pub const ANNOTATION_ADDRESS_POOL: &str = "drawbridge.dev/address-pool";

/// Service annotation: Services carrying the same key may share one external IP.
pub const ANNOTATION_ALLOW_SHARED_IP: &str = "drawbridge.dev/allow-shared-ip";

/// `IngressClass.spec.controller` value that marks an IngressClass as served by ingress-gateway.
pub const INGRESS_CONTROLLER: &str = "drawbridge.dev/ingress-gateway";

/// The name of drawbridge's IngressClass in the examples and deploy manifests.
pub const INGRESS_CLASS_NAME: &str = "drawbridge";

/// IngressClass annotation marking the cluster's default class (Kubernetes Ingress docs).
pub const ANNOTATION_DEFAULT_INGRESS_CLASS: &str = "ingressclass.kubernetes.io/is-default-class";

/// Deprecated Ingress annotation naming the class, still honoured by most controllers.
pub const ANNOTATION_INGRESS_CLASS: &str = "kubernetes.io/ingress.class";

/// EndpointSlice label naming the Service the slice belongs to (discovery.k8s.io/v1).
pub const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";

/// Service label selecting an alternative service proxy (KEP-2447). Services with this label set to
/// anything other than [`SERVICE_PROXY_NAME`] are not programmed by node-programmer.
pub const LABEL_SERVICE_PROXY_NAME: &str = "service.kubernetes.io/service-proxy-name";

/// Our value for [`LABEL_SERVICE_PROXY_NAME`].
pub const SERVICE_PROXY_NAME: &str = "drawbridge";

/// Secret type holding `tls.crt` / `tls.key` (core/v1).
pub const SECRET_TYPE_TLS: &str = "kubernetes.io/tls";

/// Field manager name used for every write drawbridge makes to the API server.
pub const FIELD_MANAGER: &str = "drawbridge";
