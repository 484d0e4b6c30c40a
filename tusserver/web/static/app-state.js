/* tusserver web UI: the page's shared state (signed-in user, server limits, refresh token in
 * memory only) and what is read from it everywhere.
 */

export const state = {
  user: null,
  limits: null,
  refreshToken: null, // memory only, never stored
  refreshTimer: null,
  lastFilesHash: '#/files',
  authOff: false,
  ready: false,
};

/** Whether the server scans files for viruses (clamd configured): only then do we say so. */
export function virusScan() {
  return Boolean(state.limits && state.limits.virus_scan);
}

/** sessionStorage key of the upload page's recent uploads (forgotten on sign-out). */
export const RESULTS_KEY = 'tusserver.recent-uploads';
