// Swagger UI for this server's own OpenAPI document. Loaded from /docs/ (no CDN), and
// told not to call the public validator, so the page makes no request to another host.
// The document declares HTTP Basic: the Authorize button takes a user name and password,
// which "Try it out" then sends with each request.
window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  validatorUrl: null,
  presets: [SwaggerUIBundle.presets.apis],
  layout: "BaseLayout",
  defaultModelsExpandDepth: 0,
});
