#!/usr/bin/env node
import "../dist/bin/bbackup-remote.js"
