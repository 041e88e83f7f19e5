// A real OpenID provider for the test suite: panva's oidc-provider (certified by the OpenID
// Foundation), on 127.0.0.1 and a free port. It prints one line `listening <issuer>` once it
// serves. Its only test seams are the account it signs in (set with POST /test/account, as a
// person would type it at the login form) and the interactions finishing at once for it.
//
//   node provider.mjs REDIRECT_URI[,REDIRECT_URI...]
import http from 'node:http';
import Provider from 'oidc-provider';

const redirectUris = (process.argv[2] || '').split(',').filter(Boolean);
let account = { sub: 'alice', email: 'alice@example.com', email_verified: true, groups: [] };

const server = http.createServer();
server.listen(0, '127.0.0.1', () => {
  const issuer = `http://127.0.0.1:${server.address().port}`;
  const client = (id, secret) => ({
    client_id: id,
    client_secret: secret,
    redirect_uris: redirectUris,
    grant_types: ['authorization_code'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
  });
  const provider = new Provider(issuer, {
    clients: [client('modelyard', 'modelyard-test-client-secret-at-least-32-bytes'), client('other-app', 'other-secret')],
    // Every client must use PKCE (S256, the library's only method by default).
    pkce: { required: () => true },
    features: { devInteractions: { enabled: false } },
    // The email and groups go into the ID token, as Keycloak, Google and Entra ID put them.
    conformIdTokenClaims: false,
    claims: { openid: ['sub'], email: ['email', 'email_verified'], groups: ['groups'] },
    scopes: ['openid', 'email', 'groups'],
    interactions: { url: (_ctx, interaction) => `/interaction/${interaction.uid}` },
    async findAccount(_ctx, sub) {
      const found = sub === account.sub ? account : { sub };
      return { accountId: sub, claims: async () => ({ ...found }) };
    },
  });
  const callback = provider.callback();

  server.on('request', async (req, res) => {
    try {
      if (req.method === 'POST' && req.url === '/test/account') {
        let body = '';
        for await (const chunk of req) body += chunk;
        account = JSON.parse(body);
        res.writeHead(204).end();
        return;
      }
      if (req.method === 'GET' && req.url.startsWith('/interaction/')) {
        // The person signs in and consents: the login form and consent screen, answered.
        const details = await provider.interactionDetails(req, res);
        let result;
        if (details.prompt.name === 'login') {
          result = { login: { accountId: account.sub } };
        } else {
          const grant = details.grantId
            ? await provider.Grant.find(details.grantId)
            : new provider.Grant({ accountId: details.session.accountId, clientId: details.params.client_id });
          grant.addOIDCScope(details.params.scope);
          result = { consent: { grantId: await grant.save() } };
        }
        await provider.interactionFinished(req, res, result, { mergeWithLastSubmission: false });
        return;
      }
      callback(req, res);
    } catch (err) {
      res.writeHead(500, { 'content-type': 'text/plain' }).end(String(err));
    }
  });
  console.log(`listening ${issuer}`);
});
