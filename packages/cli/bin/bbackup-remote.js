#!/usr/bin/env node
import "../dist/remote-cli.js"
