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

/**
 * An RFC 1123 subdomain: what most object names must be (Secrets, ServiceAccounts, add-ons).
 *
 * @since 0.1.0
 * @category predicates
 */
export const subdomainPattern = /^[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?)*$/

/**
 * @since 0.1.0
 * @category predicates
 */
export const isSubdomainName = (name: string): boolean => name.length <= 253 && subdomainPattern.test(name)

/**
 * Why `name` is not a valid value of `flag`, for an options error (undefined when it is valid).
 * The name is quoted with JSON escapes, so a control character cannot break the one-line message.
 *
 * @since 0.1.0
 * @category validation
 */
export const invalidName = (flag: string, kind: "label" | "subdomain", name: string): string | undefined =>
  (kind === "label" ? isNamespaceName(name) : isSubdomainName(name))
    ? undefined
    : `${flag}: ${JSON.stringify(name.length > 80 ? `${name.slice(0, 80)}…` : name)} is not a valid ${
      kind === "label"
        ? "DNS label (lower-case letters, digits and '-', at most 63, starting and ending alphanumeric)"
        : "DNS subdomain (DNS labels joined by '.', at most 253)"
    }`
