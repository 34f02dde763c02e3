// Entry point of the chatd web client (loaded as a module, so the DOM is ready).

import { App } from './app.mjs';

const app = new App();
app.boot();
