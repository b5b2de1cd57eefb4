# boot.py runs first after every reset. Keep it tiny: nothing here may fail.
import gc

gc.collect()
