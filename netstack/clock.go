package netstack

// The netstack's clock.
//
// Every time the packet path stores and compares (a flow's lastSeen, an
// endpoint's lastPacket, a held ACK's deadline, a flow's last path MTU
// error, the fragment tables) is a monoclock stamp: the wall clock steps
// (chrony's makestep at boot, an operator's date, a leap second, a
// hibernation), and a step back would keep flows, stacks and held ACKs for
// the step's length, while a step forward would expire every flow at once
// and close its endpoint's stack. The capture tap alone takes the wall
// clock: its timestamps are for people.
