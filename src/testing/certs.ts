// Certificates for TLS tests, made per run with openssl (Debian's openssl): a CA, and
// certificates for 127.0.0.1 signed by it. Nothing here is fit for a real deployment.

import { spawnSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

export const HAVE_OPENSSL = spawnSync('openssl', ['version'], { stdio: 'ignore' }).status === 0;

function openssl(dir: string, args: string[]): void {
  const r = spawnSync('openssl', args, { cwd: dir, encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`openssl ${args.join(' ')}: ${r.stderr}`);
}

const EC = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];

/** A CA in `dir` (`NAME.pem`, `NAME.key`); returns the path of its certificate. */
export function makeCa(dir: string, name = 'ca'): string {
  openssl(dir, ['req', '-x509', ...EC, '-keyout', `${name}.key`, '-out', `${name}.pem`, '-days', '2', '-subj', `/CN=lockstep test ${name}`]);
  return join(dir, `${name}.pem`);
}

/** A certificate for `ip` (`NAME.pem`, `NAME.key` in `dir`) signed by CA `ca` made by makeCa in the same dir. */
export function makeCert(dir: string, name: string, ca = 'ca', ip = '127.0.0.1'): { certFile: string; keyFile: string } {
  openssl(dir, ['req', ...EC, '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', `/CN=${ip}`]);
  writeFileSync(join(dir, 'san.ext'), `subjectAltName=IP:${ip}\n`);
  openssl(dir, ['x509', '-req', '-in', `${name}.csr`, '-CA', `${ca}.pem`, '-CAkey', `${ca}.key`, '-CAcreateserial', '-out', `${name}.pem`, '-days', '2', '-extfile', 'san.ext']);
  return { certFile: join(dir, `${name}.pem`), keyFile: join(dir, `${name}.key`) };
}

/** A CA and a certificate for 127.0.0.1 signed by it, in `dir`. */
export function makeCerts(dir: string): { ca: Buffer; certFile: string; keyFile: string } {
  const caFile = makeCa(dir);
  return { ca: readFileSync(caFile), ...makeCert(dir, 'server') };
}
