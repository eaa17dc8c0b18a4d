// Node-RED settings for the Node-RED contender of loadtest/compare.sh, which starts
//   node red.js --settings loadtest/nodered/settings.js --userDir <temp dir> --port <free port>
// with loadtest/nodered/flows.json copied into the temp dir. Only the flow runs: no
// editor, no admin API, no palette installs, nothing written outside the userDir.
module.exports = {
    uiHost: "127.0.0.1",
    uiPort: 1880, // compare.sh passes --port
    flowFile: "flows.json", // in the userDir
    flowFilePretty: true,
    credentialSecret: false, // the flow has no credentials
    httpAdminRoot: false, // no editor, no admin API
    httpNodeRoot: "/", // the websocket-listener serves ws://127.0.0.1:<port>/ws
    contextStorage: { default: { module: "memory" } },
    functionExternalModules: false,
    externalModules: { autoInstall: false, palette: { allowInstall: false } },
    diagnostics: { enabled: false, ui: false },
    runtimeState: { enabled: false, ui: false },
    telemetry: { enabled: false },
    logging: { console: { level: "info", metrics: false, audit: false } },
};
