/**
 * Minimal CustomResourceDefinitions of the Prometheus Operator's `ServiceMonitor` and
 * `PrometheusRule` (`monitoring.coreos.com/v1`), written for tether's chart tests: structural
 * schemas of exactly the fields the chart renders (and their neighbours a misspelling would hit),
 * so `kubectl apply --dry-run=server --validate=strict` refuses an unknown or mistyped field. Not
 * the operator's own definitions, which describe many more fields.
 */

/** A Prometheus duration, as in the operator's schema: 30s, 1m30s, 0. */
const durationPattern = String.raw`"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"`

export const serviceMonitorCrd = `apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: servicemonitors.monitoring.coreos.com
spec:
  group: monitoring.coreos.com
  scope: Namespaced
  names:
    kind: ServiceMonitor
    listKind: ServiceMonitorList
    plural: servicemonitors
    singular: servicemonitor
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          required: [spec]
          properties:
            apiVersion:
              type: string
            kind:
              type: string
            metadata:
              type: object
            spec:
              type: object
              required: [selector, endpoints]
              properties:
                jobLabel:
                  type: string
                namespaceSelector:
                  type: object
                  properties:
                    any:
                      type: boolean
                    matchNames:
                      type: array
                      items:
                        type: string
                selector:
                  type: object
                  properties:
                    matchLabels:
                      type: object
                      additionalProperties:
                        type: string
                    matchExpressions:
                      type: array
                      items:
                        type: object
                        required: [key, operator]
                        properties:
                          key:
                            type: string
                          operator:
                            type: string
                          values:
                            type: array
                            items:
                              type: string
                endpoints:
                  type: array
                  items:
                    type: object
                    properties:
                      port:
                        type: string
                      targetPort:
                        x-kubernetes-int-or-string: true
                      path:
                        type: string
                      scheme:
                        type: string
                        enum: [http, https]
                      interval:
                        type: string
                        pattern: ${durationPattern}
                      scrapeTimeout:
                        type: string
                        pattern: ${durationPattern}
`

export const prometheusRuleCrd = `apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: prometheusrules.monitoring.coreos.com
spec:
  group: monitoring.coreos.com
  scope: Namespaced
  names:
    kind: PrometheusRule
    listKind: PrometheusRuleList
    plural: prometheusrules
    singular: prometheusrule
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          required: [spec]
          properties:
            apiVersion:
              type: string
            kind:
              type: string
            metadata:
              type: object
            spec:
              type: object
              properties:
                groups:
                  type: array
                  items:
                    type: object
                    required: [name, rules]
                    properties:
                      name:
                        type: string
                        minLength: 1
                      interval:
                        type: string
                        pattern: ${durationPattern}
                      rules:
                        type: array
                        items:
                          type: object
                          required: [expr]
                          properties:
                            alert:
                              type: string
                            record:
                              type: string
                            expr:
                              x-kubernetes-int-or-string: true
                            for:
                              type: string
                              pattern: ${durationPattern}
                            labels:
                              type: object
                              additionalProperties:
                                type: string
                            annotations:
                              type: object
                              additionalProperties:
                                type: string
`
