// A real OpenID provider (node-oidc-provider) for the hub's SSO test: a "hospital identity
// provider" on loopback over HTTPS, with its own login page that checks passwords.
//
//   node provider.mjs <port> <cert.pem> <key.pem> <redirect_uri> <client_secret>
//
// Prints one JSON line ({"issuer": ...}) once it listens. ID tokens are signed RS256 with a
// key made at start, as hospital providers (Entra ID, Keycloak, ADFS) sign them.
import crypto from 'node:crypto';
import fs from 'node:fs';
import https from 'node:https';
import Provider from 'oidc-provider';

const [port, certFile, keyFile, redirectUri, clientSecret] = process.argv.slice(2);
const issuer = `https://127.0.0.1:${port}`;

// The hospital's directory. `preferred_username` is what the hub maps to its user names;
// the impostor claims a hub user's name under another subject; dr.berg's hub account has a
// password of its own, so an administrator must link it.
const accounts = {
  'kwame.osei': { password: 'correct horse battery', claims: { preferred_username: 'dr.osei', name: 'Kwame Osei', email: 'k.osei@stmary.example' } },
  stranger: { password: 'stranger password', claims: { preferred_username: 'no.such.doctor' } },
  impostor: { password: 'impostor password', claims: { preferred_username: 'dr.osei' } },
  'ana.berg': { password: 'ana berg password', claims: { preferred_username: 'dr.berg', name: 'Ana Berg' } },
};

const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
const signingKey = { ...privateKey.export({ format: 'jwk' }), kid: 'hospital-rs1', use: 'sig', alg: 'RS256' };

const provider = new Provider(issuer, {
  clients: [{
    client_id: 'medvan-hub',
    client_secret: clientSecret,
    redirect_uris: [redirectUri],
    grant_types: ['authorization_code'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
  }],
  jwks: { keys: [signingKey] },
  pkce: { methods: ['S256'], required: () => true },
  features: { devInteractions: { enabled: false } },
  claims: { openid: ['sub'], profile: ['preferred_username', 'name'], email: ['email'] },
  // Profile claims go into the ID token itself, as hospital providers put them.
  conformIdTokenClaims: false,
  cookies: { keys: [crypto.randomBytes(32).toString('hex')] },
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
  async findAccount(ctx, id) {
    const a = accounts[id];
    return a && { accountId: id, claims: async () => ({ sub: id, ...a.claims }) };
  },
});

const page = (body) => `<!doctype html><html><body>${body}</body></html>`;

async function interaction(req, res, uid) {
  const details = await provider.interactionDetails(req, res);
  if (req.method === 'GET') {
    res.setHeader('content-type', 'text/html');
    res.end(page(`<form method="post" action="/interaction/${uid}">
      <input name="login"><input name="password" type="password"><button>Sign in</button></form>`));
    return;
  }
  let body = '';
  for await (const chunk of req) body += chunk;
  const form = new URLSearchParams(body);
  const account = accounts[form.get('login')];
  if (!account || account.password !== form.get('password')) {
    res.statusCode = 401;
    res.setHeader('content-type', 'text/html');
    res.end(page('<p>Wrong user name or password.</p>'));
    return;
  }
  const grant = new provider.Grant({ accountId: form.get('login'), clientId: details.params.client_id });
  grant.addOIDCScope(details.params.scope);
  const grantId = await grant.save();
  await provider.interactionFinished(req, res, {
    login: { accountId: form.get('login') },
    consent: { grantId },
  }, { mergeWithLastSubmission: false });
}

const callback = provider.callback();
https.createServer({ cert: fs.readFileSync(certFile), key: fs.readFileSync(keyFile) }, (req, res) => {
  const m = req.url.match(/^\/interaction\/([A-Za-z0-9_-]+)$/);
  if (!m) return callback(req, res);
  interaction(req, res, m[1]).catch((e) => {
    res.statusCode = 400;
    res.end(String(e));
  });
}).listen(Number(port), '127.0.0.1', () => {
  console.log(JSON.stringify({ issuer }));
});
