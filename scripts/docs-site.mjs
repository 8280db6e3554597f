#!/usr/bin/env node
// `npm run docs`: docs/ and the README as a browsable site of static pages (default site/), each
// page with the list of all pages beside it. Links between the pages are checked on the way: a
// link to a page or a heading that is not there ends the build with exit 1 and the list of them.
//   node scripts/docs-site.mjs [OUTDIR] [--from DIR]   (DIR: the checkout whose README.md and docs/ to read)
import { mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { dirname, join, posix, relative, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { Marked } from 'marked'

const args = process.argv.slice(2)
const from = args.indexOf('--from')
const root = from < 0 ? join(dirname(fileURLToPath(import.meta.url)), '..') : resolve(args[from + 1] ?? '.')
const out = resolve(args.find((a, i) => !a.startsWith('--') && (from < 0 || i !== from + 1)) ?? join(root, 'site'))

/** the pages: the README as index.html, every Markdown file under docs/ beside it */
const walk = (dir) => readdirSync(join(root, dir), { withFileTypes: true }).flatMap((e) =>
  e.isDirectory() ? walk(posix.join(dir, e.name)) : e.name.endsWith('.md') ? [posix.join(dir, e.name)] : [])
const sources = ['README.md', ...walk('docs').sort()]
const htmlOf = (source) => (source === 'README.md' ? 'index.html' : source.replace(/^docs\//, '').replace(/\.md$/, '.html'))

/** GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens, repeats numbered */
const slugger = () => {
  const seen = new Map()
  return (text) => {
    const base = text.toLowerCase().replace(/<[^>]*>/g, '').replace(/[^\p{L}\p{N}\s_-]/gu, '').trim().replace(/\s/g, '-')
    const n = seen.get(base) ?? 0
    seen.set(base, n + 1)
    return n === 0 ? base : `${base}-${n}`
  }
}

const escape = (s) => s.replace(/[&<>"]/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;' })[c])

// first pass: each page's title and anchors, for the navigation and the link check
const pages = sources.map((source) => {
  const text = readFileSync(join(root, source), 'utf8')
  const slug = slugger()
  const anchors = new Set()
  const tokens = new Marked().lexer(text)
  for (const t of tokens) if (t.type === 'heading') anchors.add(slug(t.text))
  const title = tokens.find((t) => t.type === 'heading')?.text ?? source
  return { source, html: htmlOf(source), text, anchors, title }
})
const bySource = new Map(pages.map((p) => [p.source, p]))

const broken = []
mkdirSync(out, { recursive: true })
for (const page of pages) {
  const slug = slugger()
  const marked = new Marked({
    renderer: {
      heading({ tokens, depth, text }) {
        return `<h${depth} id="${slug(text)}">${this.parser.parseInline(tokens)}</h${depth}>\n`
      },
      link({ href, title, tokens }) {
        let target = href
        const [path, hash] = href.split('#')
        if (!/^[a-z]+:/i.test(href) && path !== undefined) {
          // a link between the pages becomes a link between the HTML files; it must lead somewhere
          const linked = path === '' ? page : bySource.get(posix.normalize(posix.join(posix.dirname(page.source), path)))
          if (path.endsWith('.md') || path === '') {
            if (linked === undefined) broken.push(`${page.source}: ${href}: there is no such page`)
            else if (hash !== undefined && !linked.anchors.has(hash)) broken.push(`${page.source}: ${href}: ${linked.source} has no heading #${hash}`)
            else target = `${path === '' ? '' : posix.relative(posix.dirname(page.html), linked.html)}${hash === undefined ? '' : `#${hash}`}`
          }
        }
        return `<a href="${escape(target)}"${title ? ` title="${escape(title)}"` : ''}>${this.parser.parseInline(tokens)}</a>`
      },
    },
  })
  const body = marked.parse(page.text)
  const nav = pages.map((p) => `<li${p === page ? ' class="here"' : ''}><a href="${escape(posix.relative(posix.dirname(page.html), p.html))}">${escape(p.title)}</a></li>`).join('\n')
  const file = join(out, page.html)
  mkdirSync(dirname(file), { recursive: true })
  writeFileSync(file, `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>${escape(page.title)} · bbackup</title>
<style>
body { margin: 0; display: flex; font: 16px/1.5 system-ui, sans-serif; color: #222 }
nav { flex: 0 0 16rem; padding: 1rem; background: #f4f4f4; min-height: 100vh; box-sizing: border-box }
nav ul { list-style: none; padding: 0 } nav li { margin: .3rem 0 } nav .here a { font-weight: bold; color: #000 }
main { flex: 1; max-width: 52rem; padding: 1rem 2rem; overflow-x: auto }
pre { background: #f6f8fa; padding: .8rem; overflow-x: auto } code { font-size: 90% }
table { border-collapse: collapse } td, th { border: 1px solid #ddd; padding: .2rem .5rem; vertical-align: top }
</style></head>
<body><nav><strong>bbackup</strong><ul>
${nav}
</ul></nav><main>
${body}</main></body></html>
`)
}
if (broken.length > 0) {
  rmSync(out, { recursive: true, force: true })
  console.error(`docs-site: ${broken.length} broken link${broken.length === 1 ? '' : 's'}:\n${broken.map((b) => `  ${b}`).join('\n')}`)
  process.exit(1)
}
console.log(`docs-site: ${pages.length} pages in ${relative(process.cwd(), out) || '.'}`)
