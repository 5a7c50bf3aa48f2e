// Verifies one request Tenlyr sent, the way its receivers would:
//  - `snippet`: the docs' own verifySignature (001, "Signature
//    verification"), type annotations removed, otherwise byte for byte;
//  - `standard`: the official `standardwebhooks` library, once per secret.
// Reads {"secrets": [...], "headers": {...}, "body": "..."} on stdin and
// prints {"snippet": [bool per secret], "standard": [bool per secret]}.
'use strict';
const crypto = require('crypto');
const { Webhook } = require('standardwebhooks');

function verifySignature( payload, signature, secret ) { const parts = signature.split(',') .reduce((acc, part) => { const [k, v] = part.split('='); acc[k] = v; return acc; }, {}); const expected = crypto .createHmac('sha256', secret) .update(`${parts['t']}.${payload.toString()}`) .digest('hex'); return crypto.timingSafeEqual( Buffer.from(parts['v1']), Buffer.from(expected) ); }

let input = '';
process.stdin.on('data', (chunk) => (input += chunk));
process.stdin.on('end', () => {
  const { secrets, headers, body } = JSON.parse(input);
  const payload = Buffer.from(body, 'utf8');
  const snippet = secrets.map((secret) => {
    try {
      return verifySignature(payload, headers['tenlyr-signature'], secret);
    } catch (err) {
      return false;
    }
  });
  const standard = secrets.map((secret) => {
    try {
      new Webhook(secret).verify(body, {
        'webhook-id': headers['webhook-id'],
        'webhook-timestamp': headers['webhook-timestamp'],
        'webhook-signature': headers['webhook-signature'],
      });
      return true;
    } catch (err) {
      return false;
    }
  });
  process.stdout.write(JSON.stringify({ snippet, standard }));
});
