"""The device agent: keys on the device, EST enrollment and renewal, MQTT over mTLS.

It ships on devices and never imports the ``fleet`` server package.
"""
