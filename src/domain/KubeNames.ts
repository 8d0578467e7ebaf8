/**
 * Kubernetes object names, as the apiserver validates them: one rule each, for the routing
 * headers and for the relay Service settings.
 *
 * @since 0.1.0
 */

/**
 * An RFC 1123 label: what a namespace name must be.
 *
 * @since 0.1.0
 * @category predicates
 */
export const namespacePattern = /^[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?$/

/**
 * An RFC 1035 label: what a Service name must be.
 *
 * @since 0.1.0
 * @category predicates
 */
export const servicePattern = /^[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?$/

/**
 * @since 0.1.0
 * @category predicates
 */
export const isNamespaceName = (name: string): boolean => namespacePattern.test(name)

/**
 * @since 0.1.0
 * @category predicates
 */
export const isServiceName = (name: string): boolean => servicePattern.test(name)

/**
 * Whether a namespace and Service name the kube-apiserver (`kubernetes.default`), in any case.
 *
 * @since 0.1.0
 * @category predicates
 */
export const isKubeApiserver = (namespace: string, service: string): boolean =>
  namespace.toLowerCase() === "default" && service.toLowerCase() === "kubernetes"
