"""Running the benchmark on devices: the local machine, Linux boards over SSH, Android over adb.

Empty until the devices issue lands; the package exists so the wheel layout is complete.
"""
