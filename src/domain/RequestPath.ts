/**
 * The request target a proxy sends upstream, pure: one rule for reading it, and the checks a
 * path needs before it is put under another.
 *
 * @since 0.1.0
 */

/**
 * The path (and query) of a request as received, in origin form; an absolute-form target
 * (`http://` or `https://`) is reduced to its path and query. Undefined for anything else
 * (`*`, authority form, a `//` path that would read as an authority, garbage): answered with 400.
 *
 * @since 0.1.0
 * @category urls
 */
export const requestPath = (url: string | undefined): string | undefined => {
  if (url === undefined || url === "") return undefined
  if (url.startsWith("/")) return url.startsWith("//") ? undefined : url
  if (!/^https?:\/\//i.test(url)) return undefined
  const parsed = URL.parse(url)
  // `http://x//a` (or `http://x/..//a`, once normalised) would also read as an authority.
  return parsed === null || parsed.pathname.startsWith("//") ? undefined : `${parsed.pathname}${parsed.search}`
}

/**
 * `prefix` followed by `path` with exactly one slash between them; `path` may carry a query.
 *
 * @since 0.1.0
 * @category urls
 */
export const joinPath = (prefix: string, path: string): string => {
  const head = prefix.replace(/\/+$/, "")
  if (path === "") return `${head}/`
  return path.startsWith("/") ? `${head}${path}` : `${head}/${path}`
}

/**
 * Whether the path part (before `?`) has a `.` or `..` segment, also when the dot or the slash
 * is percent-encoded or the separator is a backslash: such a path could leave the prefix it is
 * put under once the server normalises it.
 *
 * @since 0.1.0
 * @category urls
 */
export const hasDotSegment = (path: string): boolean => {
  // Checked on every request; most paths have neither a dot nor an escape.
  if (!path.includes(".") && !path.includes("%")) return false
  const pathOnly = path.split("?", 1)[0] ?? ""
  const decoded = pathOnly.replace(/%2e/gi, ".").replace(/%2f/gi, "/").replace(/%5c/gi, "\\")
  return decoded.split(/[/\\]/).some((segment) => segment === "." || segment === "..")
}
