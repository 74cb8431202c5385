-- Test identities for glewlwyd, applied by oidc.sh after Debian's schema
-- (/usr/share/dbconfig-common/data/glewlwyd/install/sqlite3, which also
-- creates the administrator admin / password). The OIDC plugin instances are
-- inserted by oidc.sh itself, since their issuer and keys depend on the run.
--
-- Password hashes are glewlwyd's sqlite format: base64(PBKDF2-HMAC-SHA256(
-- password, salt, 1000 iterations, 32 bytes) || salt), salt 16 characters:
--   python3 -c 'import base64,hashlib,sys;pw,s=sys.argv[1].encode(),sys.argv[2].encode();print(base64.b64encode(hashlib.pbkdf2_hmac("sha256",pw,s,1000)+s).decode())' PASSWORD SALT16CHARSXXXXX
-- alice / alice-pass, bob / bob-pass, carol / carol-pass (disabled),
-- client vpn-test / vpn-test-secret.

-- Users may carry a multi-valued "groups" property (becomes the groups claim).
UPDATE g_user_module_instance
   SET gumi_parameters = json_set(gumi_parameters, '$."data-format".groups',
       json('{"multiple":true,"read":true,"write":true,"profile-read":true,"profile-write":false}'))
 WHERE gumi_name = 'database';

INSERT INTO g_user_scope (gus_name) VALUES ('openid');

INSERT INTO g_user (gu_username, gu_name, gu_email, gu_enabled) VALUES
  ('alice', 'Alice Admin', 'alice@vpn.test', 1),
  ('bob', 'Bob Operator', 'bob@vpn.test', 1),
  ('carol', 'Carol Disabled', 'carol@vpn.test', 0);
INSERT INTO g_user_password (gu_id, guw_password) VALUES
  ((SELECT gu_id FROM g_user WHERE gu_username='alice'), '0DNKGLaMAd8Eq+K8d4IQH6B50t2UvAH6R9Ubvgyh6VR2cG50ZXN0c2FsdGFsaWNl'),
  ((SELECT gu_id FROM g_user WHERE gu_username='bob'), 'I/FG3dAx8Qb32xwukCTwaicbnYYOF17iUmM00N1b4RF2cG50ZXN0c2FsdGJvYnh4'),
  ((SELECT gu_id FROM g_user WHERE gu_username='carol'), 'i5DbSEjVhHoR3jxcND0cQmX1uThp4Kkz3/IrzrPzfsp2cG50ZXN0c2FsdGNhcm9s');
INSERT INTO g_user_property (gu_id, gup_name, gup_value) VALUES
  ((SELECT gu_id FROM g_user WHERE gu_username='alice'), 'groups', 'vpn-admins'),
  ((SELECT gu_id FROM g_user WHERE gu_username='bob'), 'groups', 'vpn-operators'),
  ((SELECT gu_id FROM g_user WHERE gu_username='carol'), 'groups', 'vpn-operators');
-- Every test user may get the openid scope.
INSERT INTO g_user_scope_user (gu_id, gus_id)
  SELECT u.gu_id, s.gus_id FROM g_user u, g_user_scope s
   WHERE u.gu_username IN ('alice','bob','carol') AND s.gus_name = 'openid';

-- vpn-test: confidential client (password grant, code, implicit, device, refresh).
-- vpn-cli: public client, as a command-line tool would be (device flow, code + PKCE).
INSERT INTO g_client (gc_client_id, gc_name, gc_confidential, gc_password, gc_enabled) VALUES
  ('vpn-test', 'VPN control plane (tests)', 1, '3TxjzGiI5dvXPMUhkCVyD8vBD9c+xCsQg+xa/i8zLzB2cG50ZXN0c2FsdHZwbi10', 1),
  ('vpn-cli', 'VPN command-line client (tests)', 0, NULL, 1);
INSERT INTO g_client_property (gc_id, gcp_name, gcp_value)
  SELECT c.gc_id, p.name, p.value FROM g_client c,
    (SELECT 'authorization_type' AS name, 'code' AS value UNION ALL
     SELECT 'authorization_type', 'token' UNION ALL
     SELECT 'authorization_type', 'id_token' UNION ALL
     SELECT 'authorization_type', 'password' UNION ALL
     SELECT 'authorization_type', 'refresh_token' UNION ALL
     SELECT 'authorization_type', 'delete_token' UNION ALL
     SELECT 'authorization_type', 'device_authorization' UNION ALL
     SELECT 'redirect_uri', 'http://127.0.0.1/callback' UNION ALL
     SELECT 'token_endpoint_auth_method', 'client_secret_basic' UNION ALL
     SELECT 'token_endpoint_auth_method', 'client_secret_post') p
   WHERE c.gc_client_id = 'vpn-test';
INSERT INTO g_client_property (gc_id, gcp_name, gcp_value)
  SELECT c.gc_id, p.name, p.value FROM g_client c,
    (SELECT 'authorization_type' AS name, 'code' AS value UNION ALL
     SELECT 'authorization_type', 'refresh_token' UNION ALL
     SELECT 'authorization_type', 'device_authorization' UNION ALL
     SELECT 'redirect_uri', 'http://127.0.0.1/callback') p
   WHERE c.gc_client_id = 'vpn-cli';

-- Consent already given: alice, bob and carol granted openid to both
-- clients, so the code and device flows need no consent step.
INSERT INTO g_client_user_scope (gs_id, gcus_username, gcus_client_id)
  SELECT s.gs_id, u.name, c.name FROM g_scope s,
    (SELECT 'alice' AS name UNION ALL SELECT 'bob' UNION ALL SELECT 'carol') u,
    (SELECT 'vpn-test' AS name UNION ALL SELECT 'vpn-cli') c
   WHERE s.gs_name = 'openid';

-- Fixed, opaque "sub" values shared by the two plugin instances (oidc and
-- oidc-short), so a user is the same subject whichever issued the token;
-- left to glewlwyd, each instance would draw its own random sub.
INSERT INTO gpo_subject_identifier (gposi_plugin_name, gposi_username, gposi_client_id, gposi_sector_identifier_uri, gposi_sub)
  SELECT p.name, u.name, NULL, NULL, u.sub FROM
    (SELECT 'oidc' AS name UNION ALL SELECT 'oidc-short') p,
    (SELECT 'alice' AS name, 'a11ce000-0000-4000-8000-000000000001' AS sub UNION ALL
     SELECT 'bob', 'b0b00000-0000-4000-8000-000000000002' UNION ALL
     SELECT 'carol', 'ca201000-0000-4000-8000-000000000003') u;
