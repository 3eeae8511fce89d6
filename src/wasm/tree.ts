// The guest directory as bytes, for recruiting a backup from a snapshot (WasiHost.snapshotState).
//
// A replica's guest directory (the WASI root, fd 3) is part of the guest's state just as its
// memory is: the backup's guest makes the same local calls (open, write, seek, …) on its own
// copy, so a recruit that skips the log must start from a copy of the primary's tree. This
// module reads the whole tree (regular files with their bytes, directories, symlinks, hard
// links between files of the tree) into a list of nodes, encodes it, and recreates it in an
// emptied root.
//
// Left out, on purpose: timestamps (the guest sees them only through filestat calls, which are
// logged inputs), owners, and any other file type (fifo, socket, device): a guest cannot make
// those (preview1 has no mknod) and the node starts its guests in an emptied directory.

import * as fs from 'node:fs';
import * as path from 'node:path';
import type { ByteReader, ByteWriter } from '../guest/bytes.js';

export type TreeNode =
  | { readonly kind: 'dir'; readonly path: readonly string[]; readonly mode: number }
  | { readonly kind: 'file'; readonly path: readonly string[]; readonly mode: number; readonly data: Uint8Array }
  | { readonly kind: 'symlink'; readonly path: readonly string[]; readonly target: string }
  /** A second name of a file listed earlier (same inode on the primary: keep it one file). */
  | { readonly kind: 'link'; readonly path: readonly string[]; readonly to: readonly string[] };

export interface Tree {
  /** Parents before children, names sorted: the order they can be recreated in. */
  readonly nodes: TreeNode[];
  /** The first path of every regular file and the path of every directory, by "dev:ino": finds where an open fd's file is now. */
  readonly byInode: Map<string, readonly string[]>;
}

const KINDS = ['dir', 'file', 'symlink', 'link'] as const;

/** The identity of a file on this disk, to match an open fd with a path of the tree. */
export function inodeKey(st: fs.BigIntStats): string {
  return `${st.dev}:${st.ino}`;
}

/** Read the whole tree under `root` (which is not itself a node). */
export function readTree(root: string): Tree {
  const tree: Tree = { nodes: [], byInode: new Map() };
  walk(root, [], tree);
  return tree;
}

function walk(root: string, dir: readonly string[], tree: Tree): void {
  const names = fs.readdirSync(path.join(root, ...dir)).sort();
  for (const name of names) {
    const rel = [...dir, name];
    const host = path.join(root, ...rel);
    const st = fs.lstatSync(host, { bigint: true });
    const mode = Number(st.mode & 0o7777n);
    if (st.isDirectory()) {
      tree.nodes.push({ kind: 'dir', path: rel, mode });
      tree.byInode.set(inodeKey(st), rel);
      walk(root, rel, tree);
    } else if (st.isSymbolicLink()) {
      tree.nodes.push({ kind: 'symlink', path: rel, target: fs.readlinkSync(host) });
    } else if (st.isFile()) {
      const first = tree.byInode.get(inodeKey(st));
      if (first !== undefined) {
        tree.nodes.push({ kind: 'link', path: rel, to: first });
      } else {
        tree.byInode.set(inodeKey(st), rel);
        tree.nodes.push({ kind: 'file', path: rel, mode, data: fs.readFileSync(host) });
      }
    }
    // Anything else (fifo, socket, device) is skipped: see the header comment.
  }
}

export function encodePath(w: ByteWriter, p: readonly string[]): void {
  w.varuint(p.length);
  for (const c of p) w.text(c);
}

/** A path of components, each a plain name: nothing in a snapshot can reach out of the root. */
export function decodePath(r: ByteReader): string[] {
  const n = r.varuint();
  if (n > 4096) r.corrupt(`a path of ${n} components`);
  const out: string[] = [];
  for (let i = 0; i < n; i++) {
    const c = r.text();
    if (c === '' || c === '.' || c === '..' || c.includes('/') || c.includes('\0')) r.corrupt(`bad path component ${JSON.stringify(c)}`);
    out.push(c);
  }
  return out;
}

export function encodeTree(w: ByteWriter, nodes: readonly TreeNode[]): void {
  w.varuint(nodes.length);
  for (const n of nodes) {
    w.u8(KINDS.indexOf(n.kind));
    encodePath(w, n.path);
    switch (n.kind) {
      case 'dir':
        w.varuint(n.mode);
        break;
      case 'file':
        w.varuint(n.mode).bytes(n.data);
        break;
      case 'symlink':
        w.text(n.target);
        break;
      case 'link':
        encodePath(w, n.to);
        break;
    }
  }
}

/**
 * Decode and check a tree: every node's parent is a directory listed before it, no path comes
 * twice, a hard link names a file listed before it. So writing it can only fail on the disk.
 */
export function decodeTree(r: ByteReader): TreeNode[] {
  const count = r.varuint();
  const kinds = new Map<string, TreeNode['kind']>();
  const nodes: TreeNode[] = [];
  for (let i = 0; i < count; i++) {
    const kind = KINDS[r.u8()] ?? r.corrupt('unknown tree node kind');
    const p = decodePath(r);
    if (p.length === 0) r.corrupt('a tree node with an empty path');
    const key = p.join('/');
    if (kinds.has(key)) r.corrupt(`the tree lists ${key} twice`);
    if (p.length > 1 && kinds.get(p.slice(0, -1).join('/')) !== 'dir') r.corrupt(`${key} comes before its directory`);
    const node = decodeNode(r, kind, p);
    if (node.kind === 'link' && kinds.get(node.to.join('/')) !== 'file') r.corrupt(`hard link ${key} to a file not listed before it`);
    kinds.set(key, kind);
    nodes.push(node);
  }
  return nodes;
}

function decodeNode(r: ByteReader, kind: TreeNode['kind'], p: string[]): TreeNode {
  switch (kind) {
    case 'dir':
      return { kind, path: p, mode: mode(r) };
    case 'file':
      return { kind, path: p, mode: mode(r), data: r.bytes() };
    case 'symlink':
      return { kind, path: p, target: r.text() };
    case 'link':
      return { kind, path: p, to: decodePath(r) };
  }
}

function mode(r: ByteReader): number {
  const m = r.varuint();
  return m <= 0o7777 ? m : r.corrupt(`bad file mode ${m}`);
}

/** Empty `root` (keeping the directory itself) and recreate the tree in it. */
export function replaceTree(root: string, nodes: readonly TreeNode[]): void {
  for (const name of fs.readdirSync(root)) fs.rmSync(path.join(root, name), { recursive: true, force: true });
  const dirs: { host: string; mode: number }[] = [];
  for (const n of nodes) {
    const host = path.join(root, ...n.path);
    switch (n.kind) {
      case 'dir':
        fs.mkdirSync(host, { mode: 0o700 });
        dirs.push({ host, mode: n.mode });
        break;
      case 'file':
        fs.writeFileSync(host, n.data, { mode: 0o600 });
        fs.chmodSync(host, n.mode);
        break;
      case 'symlink':
        fs.symlinkSync(n.target, host);
        break;
      case 'link':
        fs.linkSync(path.join(root, ...n.to), host);
        break;
    }
  }
  // Directory modes last, deepest first: a read-only directory must be filled before.
  for (const d of dirs.reverse()) fs.chmodSync(d.host, d.mode);
}
