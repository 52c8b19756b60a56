"""Mosquitto 2.0 enforcement: a C plugin (``plugin/``) and its sync sidecar.

* ``plugin/`` - the C units of ``fleet_plugin.so`` (entry points in
  ``fleet_plugin.c``; ``fleet_plugin.h`` lists the others), compiled by
  :mod:`.build` against the distro's mosquitto-dev/libmosquitto-dev/libssl-dev
  headers; loaded by Mosquitto. It makes ``fleet.kernel.admission``'s checks in
  the same order (``admission.c``), with the constants of ``fleet_kernel.h``
  (generated from the kernel by ``python -m fleet.kernel.cheader``; a unit test
  fails when it is stale).
* :mod:`.config` - the broker settings file and the mosquitto.conf it implies.
* :mod:`.identity` - the sidecar's client certificate (issuing CA, reserved CN).
* :mod:`.sync` - the sidecar: follows the store's revocation feed, pushes each
  event to the plugin over ``$CONTROL/fleet/v1`` (:mod:`.plugin_link`, client
  from :mod:`.sidecar_client`), keeps crlfile (:mod:`.crl_keeper`), the trust
  files (:mod:`.trust_files`) and the revocation snapshot current; :mod:`.peers`
  tells other nodes of new sessions.
"""
