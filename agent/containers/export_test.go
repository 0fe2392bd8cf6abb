package containers

// SetCreateFault sets the hook CreateContainer runs once its storages are
// acquired (nil: none).
func SetCreateFault(f func()) { createFault = f }
